"""SimCLR: NT-Xent against a reference, padding, and the same numbers on 1 or 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpretrain import parallel
from jaxpretrain.data import augment as augment_lib
from jaxpretrain.data import data_source
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.models.contrastive import ContrastiveModel
from jaxpretrain.models.conv import ConvEncoder
from jaxpretrain.objectives.contrastive import nt_xent, simclr
from jaxpretrain.step import make_eval_step, make_train_step
from tests.helpers import (assert_trees_close, image_batch, run_mesh, run_pmap, run_single,
                           to_numpy)

LR = 1e-2
# As in test_parallel: Adam's normalised update lets summation order move a parameter by a
# small fraction of one step.
PARAMS_ATOL = 0.01 * LR


def _reference_nt_xent(z1, z2, temperature):
  """NT-Xent written out view by view, in float64."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z)
  losses = []
  for i in range(n):
    positive = (i + n // 2) % n
    others = [j for j in range(n) if j != i]
    logits = np.array([z[i] @ z[j] for j in others]) / temperature
    losses.append(np.log(np.sum(np.exp(logits))) - z[i] @ z[positive] / temperature)
  return np.mean(losses)


def _model(norm=None):
  return ContrastiveModel(ConvEncoder(stages=((4,), (8,)), norm=norm), projection_hidden=16,
                          projection_dim=8)


def _state(model, batch):
  return create_state(model, identity(), tx=optax.adamw(LR), rng=jax.random.PRNGKey(0),
                      example_batch=batch)


@functools.cache
def _initial_state():
  """The tiny model's state for batches of 16 8x8 images, made once (as numpy)."""
  return to_numpy(_state(_model(), image_batch(16, size=8)))


def test_nt_xent_matches_reference():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 5, 3)).astype(np.float32)
  loss = jax.jit(lambda z1, z2, t: nt_xent(z1, z2, temperature=t))
  for temperature in (0.1, 0.5, 1.0):
    np.testing.assert_allclose(loss(z1, z2, temperature),
                               _reference_nt_xent(z1, z2, temperature), rtol=1e-5)
  # Cosine similarity: the scale of a projection does not matter.
  np.testing.assert_allclose(loss(3 * z1, z2, 0.5), loss(z1, z2, 0.5), rtol=1e-6)


def test_padded_examples_are_neither_anchors_nor_negatives():
  rng = np.random.default_rng(1)
  z1, z2 = rng.normal(size=(2, 6, 4)).astype(np.float32)
  weights = np.array([1, 1, 1, 1, 0, 0], np.float32)

  @jax.jit
  def loss_and_grads(z1, z2, weights):
    loss = lambda z1, z2: nt_xent(z1, z2, temperature=0.5, weights_B=weights)
    return jax.value_and_grad(loss, argnums=(0, 1))(z1, z2)

  loss, grads = loss_and_grads(z1, z2, weights)
  np.testing.assert_allclose(loss, _reference_nt_xent(z1[:4], z2[:4], 0.5), rtol=1e-5)
  other1, other2 = z1.copy(), z2.copy()
  other1[4:], other2[4:] = rng.normal(size=(2, 2, 4)) * 10
  other_loss, other_grads = loss_and_grads(other1, other2, weights)
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  for g, other in zip(grads, other_grads):
    np.testing.assert_allclose(other[:4], g[:4], atol=1e-6)
    np.testing.assert_array_equal(g[4:], 0.0)
  # Nothing real at all: a zero loss, not a NaN.
  assert float(loss_and_grads(z1, z2, np.zeros(6, np.float32))[0]) == 0.0


def test_simclr_views_and_metrics_with_a_plain_apply_fn():
  images = image_batch(8, size=4, seed=2)['image']
  batch = {'image': images}
  calls = []

  def apply_fn(variables, batch, *, train, rngs):  # pylint: disable=unused-argument
    calls.append(batch['image'].shape)
    return {'projection': batch['image'].reshape(batch['image'].shape[0], -1)}

  def noisy(image, rng):
    return image + jax.random.normal(rng, image.shape)

  @jax.jit
  def run(rng_a, rng_b):
    same = simclr(augment=None)(apply_fn, {}, batch, rng_a)
    views = simclr(augment=noisy)
    train = [views(apply_fn, {}, batch, r)[0] for r in (rng_a, rng_b)]
    evaluation = [views(apply_fn, {}, batch, r, train=False)[0] for r in (rng_a, rng_b)]
    return same, train, evaluation

  (loss, metrics), train, evaluation = run(jax.random.PRNGKey(1), jax.random.PRNGKey(2))
  # One model call per objective call, on both views of all 8 images together.
  assert calls == [(16, 4, 4, 1)] * 5
  # Identical views of distinct images: every positive is the best candidate.
  flat = images.reshape(8, -1)
  np.testing.assert_allclose(loss, _reference_nt_xent(flat, flat, 0.5), rtol=1e-5)
  assert float(metrics['accuracy']) == 1.0
  # Training draws new views from every key; evaluation always the same ones.
  assert float(train[0]) != float(train[1])
  assert float(evaluation[0]) == float(evaluation[1])


def test_model_outputs_and_parameter_tree():
  batch = image_batch(4, size=8)
  model = _model()
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  out = jax.eval_shape(model.apply, variables, batch)
  assert out['features'].shape == (4, 8)
  assert out['projection'].shape == (4, 8)
  assert set(variables['params']) == {'encoder', 'projection'}
  assert set(variables['params']['projection']) == {'hidden', 'out'}


def test_pmap_gathered_gradient_equals_single_device_with_fixed_views():
  """Distinct fixed views and uneven padding over devices: loss and gradient agree."""
  batch = image_batch(16, size=8, seed=4)
  rng = np.random.default_rng(4)
  view1 = batch['image'] + rng.normal(0, 0.1, batch['image'].shape).astype(np.float32)
  view2 = batch['image'][:, :, ::-1] + rng.normal(0, 0.1, batch['image'].shape).astype(np.float32)
  mask = np.array([1] * 11 + [0] * 5, np.float32)  # devices 5..7 hold padding
  model = _model()
  params = _initial_state().params

  def loss_fn(params, view1, view2, mask, axis_name=None):
    z1 = model.apply({'params': params}, {'image': view1}, train=True)['projection']
    z2 = model.apply({'params': params}, {'image': view2}, train=True)['projection']
    return nt_xent(z1, z2, temperature=0.5, weights_B=mask, axis_name=axis_name)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, view1, view2, mask)

  def per_device(params, view1, view2, mask, gather):
    value, grads = jax.value_and_grad(loss_fn)(params, view1, view2, mask,
                                               'batch' if gather else None)
    return jax.lax.pmean((value, grads), 'batch')

  split = parallel.split_for_pmap({'v1': view1, 'v2': view2, 'mask': mask})
  pmapped = jax.pmap(per_device, axis_name='batch', static_broadcasted_argnums=4)
  p_loss, p_grads = parallel.unreplicate(pmapped(
      parallel.replicate(params), split['v1'], split['v2'], split['mask'], True))
  np.testing.assert_allclose(p_loss, loss, rtol=1e-5)
  assert_trees_close(grads, p_grads, atol=1e-6, rtol=1e-4)
  assert float(optax.tree.norm(grads)) > 1e-3
  # Without gathering, each device's 2 examples see only 3 candidates instead of up to 21.
  local_loss, _ = parallel.unreplicate(pmapped(
      parallel.replicate(params), split['v1'], split['v2'], split['mask'], False))
  assert float(loss) - float(local_loss) > 1.0


def test_simclr_training_agrees_on_one_device_a_mesh_and_pmap():
  """Identity augmentation, since pmap folds the device index into each device's key."""
  batches = [image_batch(16, size=8, seed=s) for s in range(3)]
  batches[1]['mask'] = np.array([1] * 11 + [0] * 5, np.float32)
  for b in batches[::2]:
    b['mask'] = np.ones(16, np.float32)
  init = _initial_state()
  ref_state, ref_metrics = run_single(init, batches, simclr(augment=None))
  runs = [run_mesh(init, batches, simclr(augment=None)),
          run_pmap(init, batches, simclr(augment=None, axis_name='batch'))]
  for state, metrics in runs:
    assert_trees_close(ref_state.params, state.params, atol=PARAMS_ATOL)
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-5)
    np.testing.assert_allclose(metrics['accuracy'], ref_metrics['accuracy'], atol=1e-6)


def test_pmap_evaluation_with_padding_agrees_with_one_device():
  """Evaluation views come from each example's global index, so every device count sees the
  same views; a jitted step over a mesh runs the one-device program on the global batch."""
  batch = image_batch(16, size=8, seed=5)
  batch['mask'] = np.array([1] * 11 + [0] * 5, np.float32)
  state = _initial_state()
  augment = augment_lib.standard()
  reference = jax.jit(make_eval_step(simclr(augment=augment)))(
      state, {'image': batch['image'][:11]})
  pmapped = parallel.unreplicate(parallel.pmap(
      make_eval_step(simclr(augment=augment, axis_name='batch'), axis_name='batch'),
      donate=False)(parallel.replicate(state), parallel.split_for_pmap(batch)))
  np.testing.assert_allclose(pmapped['loss'], reference['loss'], rtol=1e-5)
  np.testing.assert_allclose(pmapped['accuracy'], reference['accuracy'], atol=1e-6)
  assert float(pmapped['weight']) == 11


def _fashion_mnist(n=32):
  """Real test images, 2x2-average-pooled to 14x14."""
  examples = data_source('fashion_mnist', f'test[:{n}]').__getitems__(list(range(n)))
  images = np.stack([e['image'] for e in examples]).astype(np.float32) / 255.0
  return {'image': images.reshape(n, 14, 2, 14, 2, 1).mean(axis=(2, 4))}


def test_simclr_learns_on_fashion_mnist_with_batch_norm():
  batch = _fashion_mnist()
  state = _state(_model(norm='batch'), batch)
  initial_stats = state.model_state['batch_stats']
  step = jax.jit(make_train_step(simclr(augment=augment_lib.crop_flip_jitter())))
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
  # BatchNorm's running statistics came back through the objective.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), initial_stats,
                       state.model_state['batch_stats'])
  assert min(jax.tree.leaves(moved)) > 0
