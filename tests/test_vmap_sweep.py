"""Vmapped sweeps: K trials in one program equal K separate runs."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from jaxpretrain import build, parallel
from jaxpretrain.finetune import create_state, identity, linear_probe
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_train_step
from jaxpretrain.vmap_sweep import (get_lr_scales, num_trials, scaled, set_lr_scales, stack,
                                    trial_states, unstack, vmap_step)
from tests.helpers import assert_trees_close, image_batch, run_single, tiny_classifier

STEPS = 3
BATCHES = [image_batch(16, seed=s) for s in range(STEPS)]
MODEL = tiny_classifier(norm='batch')  # BatchNorm: model_state is per trial too.


def _optimizer(name='adamw', lr=1e-2):
  """Warm-up over 2 steps, then cosine decay: the rate changes at every step."""
  cfg = ml_collections.ConfigDict(dict(name=name, lr=lr, weight_decay=1e-2, warmup_steps=2,
                                       schedule='cosine'))
  return build.optimizer(cfg, total_steps=5)


def _create(tx):
  return lambda rng: create_state(MODEL, identity(), tx=tx, rng=rng, example_batch=BATCHES[0])


def _run_vmapped(states, batches=BATCHES):
  step = jax.jit(vmap_step(make_train_step(classification())), donate_argnums=0)
  for b in batches:
    states, metrics = step(states, b)
  assert step._cache_size() == 1
  return states, metrics


@pytest.mark.parametrize('name', ['adamw', 'sgd'])
def test_scaled_equals_the_optimizer_at_the_scaled_learning_rate(name):
  c = 0.3
  state = set_lr_scales(_create(scaled(_optimizer(name)))(jax.random.PRNGKey(0)), c)
  reference = _create(_optimizer(name, lr=1e-2 * c))(jax.random.PRNGKey(0))
  state, metrics = run_single(state, BATCHES)
  reference, ref_metrics = run_single(reference, BATCHES)
  assert_trees_close(state.params, reference.params)
  assert_trees_close(state.opt_state[0], reference.opt_state)
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-5)


def test_each_trial_of_a_vmapped_run_equals_its_own_sequential_run():
  seeds, scales = [0, 1, 2], [0.3, 1.0, 3.0]
  states = trial_states(_create(scaled(_optimizer())), seeds=seeds, lr_scales=scales)
  assert num_trials(states) == 3
  states, metrics = _run_vmapped(states)
  assert metrics['loss'].shape == (3,)
  for k, (seed, c) in enumerate(zip(seeds, scales)):
    alone, alone_metrics = run_single(_create(_optimizer(lr=1e-2 * c))(jax.random.PRNGKey(seed)),
                                      BATCHES)
    trial = unstack(states, k)
    assert_trees_close(trial.params, alone.params)
    assert_trees_close(trial.model_state, alone.model_state)
    assert_trees_close(trial.opt_state[0], alone.opt_state)
    np.testing.assert_array_equal(trial.rng, alone.rng)
    np.testing.assert_allclose(metrics['loss'][k], alone_metrics['loss'], rtol=1e-5)
    assert int(trial.step) == STEPS


def test_one_seed_is_shared_by_all_learning_rates():
  states = trial_states(_create(scaled(_optimizer())), seeds=7, lr_scales=[1.0, 2.0])
  first, second = unstack(states, 0), unstack(states, 1)
  assert_trees_close(first.params, second.params, atol=0, rtol=0)
  np.testing.assert_array_equal(first.rng, second.rng)
  np.testing.assert_allclose(get_lr_scales(states), [1.0, 2.0])


def test_a_single_trial_works():
  states = trial_states(_create(scaled(_optimizer())), seeds=0, lr_scales=2.0)
  assert num_trials(states) == 1
  states, _ = _run_vmapped(states)
  alone, _ = run_single(_create(_optimizer(lr=2e-2))(jax.random.PRNGKey(0)), BATCHES)
  assert_trees_close(unstack(states, 0).params, alone.params)


def test_seeds_alone_need_no_scaled_optimizer():
  states = trial_states(_create(optax.sgd(0.1)), seeds=[0, 1])
  assert num_trials(states) == 2
  with pytest.raises(ValueError, match='scaled'):
    get_lr_scales(states)


def test_stack_and_unstack_round_trip():
  states = trial_states(_create(scaled(_optimizer())), seeds=[0, 1, 2], lr_scales=[1, 2, 3])
  restacked = stack([unstack(states, k) for k in range(3)])
  assert jax.tree.structure(restacked) == jax.tree.structure(states)
  assert_trees_close(restacked, states, atol=0, rtol=0)
  with pytest.raises(IndexError):
    unstack(states, 3)
  with pytest.raises(ValueError, match='not stacked'):
    unstack(unstack(states, 0), 0)


def test_mismatched_states_are_refused_with_the_difference_named():
  create = _create(scaled(_optimizer()))
  state = create(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='state 1 has another apply_fn'):
    stack([state, create(jax.random.PRNGKey(1))])  # Two create_state calls, two closures.
  with pytest.raises(ValueError, match='state 1 has another tx'):
    stack([state, state.replace(tx=optax.sgd(0.1))])
  with pytest.raises(ValueError, match="in only one of them, e.g. \\['extra/ema/"):
    stack([state, state.replace(extra={'ema': state.params})])
  params = jax.tree.map(lambda x: x[..., :1], state.params)
  with pytest.raises(ValueError, match="state 1 differs from state 0 at 'params/"):
    stack([state, state.replace(params=params)])


def test_wrong_numbers_of_trials_are_refused():
  create = _create(scaled(_optimizer()))
  with pytest.raises(ValueError, match='2 seeds and 3 lr_scales'):
    trial_states(create, seeds=[0, 1], lr_scales=[1, 2, 3])
  states = trial_states(create, seeds=[0, 1])
  with pytest.raises(ValueError, match=r'shape \(3,\)'):
    set_lr_scales(states, [1, 2, 3])


def test_vmapped_step_over_a_mesh_equals_one_device():
  states = trial_states(_create(scaled(_optimizer())), seeds=[0, 1], lr_scales=[0.5, 2.0])
  mesh = parallel.make_mesh()
  step = parallel.jit(vmap_step(make_train_step(classification())), mesh, states)
  placed = parallel.place_state(states, mesh)  # A copy: `states` survives the donation.
  for b in BATCHES:
    placed, metrics = step(placed, parallel.shard_batch(b, mesh))
  assert metrics['loss'].shape == (2,)
  expected, _ = _run_vmapped(states)
  assert_trees_close(placed.params, expected.params)


def test_shared_frozen_and_rng_equal_per_trial_copies_and_run_once():
  tx = scaled(_optimizer())
  create = lambda rng: create_state(MODEL, linear_probe(), tx=tx, rng=rng,
                                    example_batch=BATCHES[0])
  copies = trial_states(create, lr_scales=[0.5, 1.0, 2.0])
  shared = trial_states(create, lr_scales=[0.5, 1.0, 2.0], shared=('frozen', 'rng'))
  assert jax.tree.map(np.shape, shared.frozen) == jax.tree.map(lambda x: x.shape[1:],
                                                               copies.frozen)
  assert shared.rng.shape == copies.rng.shape[1:]
  step = make_train_step(classification())
  shared_step = jax.jit(vmap_step(step, shared=('frozen', 'rng')))
  flops = [jax.jit(vmap_step(step)).lower(copies, BATCHES[0]).compile().cost_analysis(),
           shared_step.lower(shared, BATCHES[0]).compile().cost_analysis()]
  flops = [(f[0] if isinstance(f, list) else f)['flops'] for f in flops]
  assert flops[1] < 0.6 * flops[0]  # the frozen encoder runs once, not three times
  ref, _ = _run_vmapped(copies)
  for b in BATCHES:
    shared, metrics = shared_step(shared, b)
  assert metrics['loss'].shape == (3,)
  assert_trees_close(ref.params, shared.params, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, shared.frozen,
               jax.tree.map(lambda x: x[0], ref.frozen))
  np.testing.assert_array_equal(shared.rng, ref.rng[0])
  with pytest.raises(ValueError, match='one seed'):
    trial_states(create, seeds=[0, 1], shared=('rng',))
  with pytest.raises(ValueError, match='cannot share'):
    vmap_step(step, shared=('params',))
