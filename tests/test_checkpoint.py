"""Checkpoints: exact resumption, retention, manifests, partial restore, bad input."""

import json

import jax
import numpy as np
import optax
import pytest

from jaxpretrain import checkpoint
from jaxpretrain.errors import CheckpointMismatchError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_train_step
from tests.helpers import image_batch, tiny_classifier, to_numpy

BATCHES = [image_batch(8, seed=s) for s in range(10)]


def _state(num_classes=3):
  return create_state(tiny_classifier(num_classes=num_classes), identity(),
                      tx=optax.adamw(1e-2), rng=jax.random.PRNGKey(0),
                      example_batch=BATCHES[0])


_STEP = jax.jit(make_train_step(classification()))


def _train(state, start, stop):
  for i in range(start, stop):
    state, _ = _STEP(state, BATCHES[i])
  return state


def test_resumed_run_is_bitwise_the_uninterrupted_run(tmp_path):
  uninterrupted = _train(_state(), 0, 10)
  with checkpoint.Checkpointer(tmp_path, save_every=5) as ckpt:
    state = _train(_state(), 0, 5)
    assert ckpt.save(state, data_state={'position': 5})
  with checkpoint.Checkpointer(tmp_path, save_every=5) as ckpt:
    restored, data_state = ckpt.restore(_state())
  assert data_state == {'position': 5}
  resumed = _train(restored, data_state['position'], 10)
  for a, b in zip(jax.tree.leaves(to_numpy(uninterrupted)), jax.tree.leaves(to_numpy(resumed)),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_keeps_last_and_best_and_writes_manifest(tmp_path):
  state = _state()
  accuracy = {1: 0.5, 2: 0.9, 3: 0.4, 4: 0.3, 5: 0.2}
  with checkpoint.Checkpointer(tmp_path, save_every=1, keep_last=2, keep_best=1,
                               best_metric='accuracy',
                               manifest={'model': 'tiny'}) as ckpt:
    for step, acc in accuracy.items():
      ckpt.save(state.replace(step=np.int32(step)), metrics={'accuracy': acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
  manifest = checkpoint.read_manifest(tmp_path, step=2)
  assert manifest['model'] == 'tiny' and manifest['step'] == 2
  assert manifest['metrics'] == {'accuracy': 0.9}
  assert manifest['library_version']
  json.dumps(manifest)


def test_save_every_skips_steps_not_due(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, save_every=3) as ckpt:
    saved = [ckpt.save(state.replace(step=np.int32(s))) for s in range(1, 7)]
    assert saved == [False, False, True, False, False, True]


def test_restore_params_loads_only_parameters(tmp_path):
  state = _train(_state(), 0, 2)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(state, force=True)
  params = checkpoint.restore_params(tmp_path)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_restore_into_other_shape_names_parameter_and_shapes(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(_state(), force=True)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointMismatchError,
                       match=r'params/head/dense/bias: checkpoint \(3,\), model \(5,\)'):
      ckpt.restore(_state(num_classes=5))
    assert ckpt.all_steps() == [0]  # nothing lost


def test_workdir_of_another_run_is_refused(tmp_path):
  with checkpoint.Checkpointer(tmp_path, run_identity={'model': 'a'}) as ckpt:
    ckpt.save(_state(), force=True)
  with pytest.raises(CheckpointMismatchError, match="another run.*model: saved 'a', now 'b'"):
    checkpoint.Checkpointer(tmp_path, run_identity={'model': 'b'})
  assert checkpoint.open_checkpoints(tmp_path).all_steps() == [0]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='work directory'):
    checkpoint.restore_params(tmp_path / 'nowhere')
