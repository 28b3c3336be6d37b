"""The average of the parameters: its updates, its use in evaluation, runs that keep one."""

import shutil

import jax
import numpy as np
import optax
import pytest

from jaxpretrain import build, checkpoint, config as config_lib, data as data_lib, ema, loop
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.objectives import classification
from jaxpretrain.step import apply_model, make_eval_step, make_train_step
from tests.helpers import (assert_trees_close, image_batch, run_mesh, run_pmap, run_single,
                           tiny_classifier, to_numpy)

BATCHES = [image_batch(16, seed=s) for s in range(3)]
FINETUNE = 'configs/fashion_mnist_finetune.py:tiny'


def _state():
  return create_state(tiny_classifier(), identity(), tx=optax.sgd(0.1),
                      rng=jax.random.PRNGKey(0), example_batch=BATCHES[0])


def test_average_follows_the_parameters_with_a_warm_up_decay_and_leaves_training_alone():
  plain = jax.jit(make_train_step(classification()))
  averaging = jax.jit(make_train_step(classification(), ema_decay=0.5))
  state, averaged = _state(), ema.init(_state())
  expected = jax.tree.map(np.asarray, state.params)
  for t, batch in enumerate(BATCHES):
    state, _ = plain(state, batch)
    averaged, _ = averaging(averaged, batch)
    d = min(0.5, (1 + t) / (10 + t))  # the warm-up: 0.1, 0.18, 0.25
    expected = jax.tree.map(lambda a, p: d * a + (1 - d) * np.asarray(p), expected, state.params)
  assert_trees_close(averaged.params, state.params, atol=0, rtol=0)
  assert_trees_close(averaged.extra[ema.KEY], expected, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(expected)[0], jax.tree.leaves(state.params)[0])


def test_evaluation_and_prediction_score_the_average():
  state, _ = run_single(_state(), BATCHES[:1])
  average = jax.tree.map(lambda p: 0.5 * p, state.params)
  keeping = state.replace(extra={ema.KEY: average})
  swapped = state.replace(params=average)
  evaluate = jax.jit(make_eval_step(classification()))
  assert_trees_close(evaluate(keeping, BATCHES[1]), evaluate(swapped, BATCHES[1]), atol=0, rtol=0)
  assert_trees_close(apply_model(keeping, BATCHES[1]), apply_model(swapped, BATCHES[1]),
                     atol=0, rtol=0)
  assert not np.allclose(evaluate(keeping, BATCHES[1])['loss'], evaluate(state, BATCHES[1])['loss'])


def test_average_is_the_same_on_one_device_over_a_mesh_and_under_pmap():
  init = to_numpy(ema.init(_state()))
  (ref, _), *others = [run(init, BATCHES, ema_decay=0.9)
                       for run in (run_single, run_mesh, run_pmap)]
  for other, _ in others:
    assert_trees_close(other.extra[ema.KEY], ref.extra[ema.KEY], atol=1e-5)


def test_a_step_averaging_a_state_without_an_average_says_how_to_start_one():
  with pytest.raises(ValueError, match=r'start one with ema.init\(state\)'):
    make_train_step(classification(), ema_decay=0.9)(_state(), BATCHES[0])


@pytest.mark.parametrize('decay', [-0.1, 1.0])
def test_a_decay_outside_zero_to_one_is_refused_before_training(tmp_path, decay):
  config = config_lib.override(config_lib.load(FINETUNE), [f'train.ema_decay={decay}'])
  with pytest.raises(ConfigError, match=r'train.ema_decay: EMA decay .* outside \[0, 1\)'):
    loop.train(config, tmp_path, kind='finetune', progress=False)
  assert not (tmp_path / 'checkpoints').exists()


def test_a_run_keeping_an_average_resumes_exactly_and_exports_and_scores_the_average(tmp_path):
  config = config_lib.override(config_lib.load(FINETUNE),
                               ['train.ema_decay=0.9', 'checkpoint.keep_last=2'])
  workdir = tmp_path / 'run'
  loop.train(config, workdir, kind='finetune', progress=False)
  with checkpoint.open_checkpoints(workdir) as reader:
    first, last = reader.all_steps()[-2:]
    final = checkpoint._restore_parts(reader, ('params', 'extra'), last)
  shutil.rmtree(workdir / 'checkpoints' / str(last))
  loop.train(config, workdir, kind='finetune', progress=False)
  with checkpoint.open_checkpoints(workdir) as reader:
    resumed = checkpoint._restore_parts(reader, ('params', 'extra'), last)
  assert first < last
  assert_trees_close(resumed, final, atol=0, rtol=0)

  exported = checkpoint.restore_params(workdir, step='latest')
  assert_trees_close(exported, final['extra'][ema.KEY], atol=0, rtol=0)
  assert not np.allclose(jax.tree.leaves(exported)[0], jax.tree.leaves(final['params'])[0])
  # `evaluate` scores the exported (averaged) weights; without train.ema_decay, the raw ones.
  test = data_lib.load_split(loop.split_source(config.data, 'test[:40]'))
  model = build.model(config.model)
  raw_config = config_lib.override(config, ['train.ema_decay=0'])
  for cfg, params in ((config, exported), (raw_config, final['params'])):
    logits = model.apply({'params': params}, test, train=False)['logits']
    np.testing.assert_allclose(
        loop.evaluate(cfg, workdir, split='test[:40]', step='latest')['loss'],
        optax.softmax_cross_entropy_with_integer_labels(logits, test['label']).mean(), rtol=1e-5)


@pytest.mark.parametrize('saved, resumed', [(0.9, 0.0), (0.0, 0.9)])
def test_resuming_with_or_without_an_average_unlike_the_checkpoints_is_refused(
    tmp_path, saved, resumed):
  config = config_lib.override(config_lib.load(FINETUNE), ['train.epochs=1'])
  loop.train(config_lib.override(config, [f'train.ema_decay={saved}']), tmp_path,
             kind='finetune', progress=False)
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  more = config_lib.override(config, [f'train.ema_decay={resumed}', 'train.epochs=2'])
  with pytest.raises(ConfigError, match=r'saved with(out)? an average of the weights.*'
                                        r'Nothing was changed on disk'):
    loop.train(more, tmp_path, kind='finetune', progress=False)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before
  if not saved:  # No average to score: evaluation says which setting reads these weights.
    with pytest.raises(ConfigError, match=r'saved without an average.*train.ema_decay=0'):
      loop.evaluate(more, tmp_path, split='test[:8]', step='latest')
