"""The same step three ways: single device, jit over a mesh, pmap."""

import jax
import numpy as np
import optax
import pytest

from jaxpretrain import parallel
from jaxpretrain.errors import BatchError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_eval_step, make_train_step
from tests.helpers import (assert_trees_close, image_batch, run_mesh, run_pmap, run_single,
                           tiny_classifier, to_numpy)

STEPS = 5
LR = 1e-2
# Adam scales every update to about the learning rate, so a gradient summed in another order
# (across devices, or by pmap's psum) can move a parameter whose gradient is near zero by a
# small fraction of it; the paths agree to 1% of one step.
PARAMS_ATOL = 0.01 * LR


def _state(batch):
  return create_state(tiny_classifier(), identity(), tx=optax.adamw(LR),
                      rng=jax.random.PRNGKey(0), example_batch=batch)


def _batches():
  return [image_batch(16, seed=s) for s in range(STEPS)]


def test_eight_devices():
  assert jax.device_count() == 8


def test_single_mesh_and_pmap_agree_over_five_adamw_steps():
  batches = _batches()
  init = to_numpy(_state(batches[0]))
  results = [run(init, batches) for run in (run_single, run_mesh, run_pmap)]
  (ref_state, ref_metrics), *others = results
  assert ref_metrics['loss'] < 1.2  # it trained
  for state, metrics in others:
    assert_trees_close(ref_state.params, state.params, atol=PARAMS_ATOL)
    assert_trees_close(ref_state.opt_state, state.opt_state, atol=1e-5)
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], atol=1e-5)
    assert int(state.step) == STEPS


def test_mesh_step_compiles_once_and_donates_state():
  batches = _batches()
  state = _state(batches[0])
  mesh = parallel.make_mesh()
  step = parallel.jit(make_train_step(classification()), mesh, state)
  placed = parallel.place_state(state, mesh)
  for b in batches:
    previous = placed
    placed, _ = step(placed, parallel.shard_batch(b, mesh))
  assert step._cache_size() == 1
  assert jax.tree.leaves(previous.params)[0].is_deleted()
  # place_state copies, so the original state survives donation.
  assert not jax.tree.leaves(state.params)[0].is_deleted()


def test_eval_step_agrees_across_paths_with_padding():
  batch = image_batch(16, seed=3)
  batch['mask'] = np.array([1] * 11 + [0] * 5, np.float32)
  state = _state(batch)
  single = jax.jit(make_eval_step(classification()))(state, batch)
  mesh = parallel.make_mesh()
  meshed = parallel.jit(make_eval_step(classification()), mesh, state, donate=False)(
      parallel.place_state(state, mesh), parallel.shard_batch(batch, mesh))
  pmapped = parallel.unreplicate(
      parallel.pmap(make_eval_step(classification(), axis_name='batch'), donate=False)(
          parallel.replicate(state), parallel.split_for_pmap(batch)))
  unpadded = {k: v[:11] for k, v in batch.items() if k != 'mask'}
  reference = jax.jit(make_eval_step(classification()))(state, unpadded)
  for metrics in (single, meshed, pmapped):
    np.testing.assert_allclose(metrics['loss'], reference['loss'], rtol=1e-5)
    np.testing.assert_allclose(metrics['accuracy'], reference['accuracy'], rtol=1e-5)
    assert float(metrics['weight']) == 11


def test_indivisible_batch_is_a_clear_error():
  mesh = parallel.make_mesh()
  with pytest.raises(BatchError, match='not divisible by the 8 devices.*multiple of 8'):
    parallel.shard_batch(image_batch(12), mesh)
  with pytest.raises(BatchError, match='multiple of 8'):
    parallel.split_for_pmap(image_batch(12))


def test_ragged_batch_is_a_clear_error():
  batch = image_batch(16)
  batch['label'] = batch['label'][:8]
  with pytest.raises(BatchError, match='same leading dimension'):
    parallel.shard_batch(batch, parallel.make_mesh())


def test_pmap_rejects_step_built_for_another_axis():
  with pytest.raises(ValueError, match="axis_name='batch'"):
    parallel.pmap(make_train_step(classification(), axis_name='devices'))
