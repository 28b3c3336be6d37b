"""Masked image modelling: patches, masks, what the encoder sees, learning, determinism, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain.errors import ConfigError
from jaxpretrain.models.core import make_apply_fn
from jaxpretrain.models.mae import MaskedAutoencoder
from jaxpretrain.models.vit import ViT
from jaxpretrain.objectives.masked_image import (masked_image_modeling, num_masked_patches,
                                                 patchify, random_patch_masks, unpatchify)

from tests.helpers import image_batch

SIZE, PATCH = 16, 4
N = (SIZE // PATCH) ** 2


def images(n=4, size=SIZE, channels=1, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, channels)).astype(np.float32)


def test_patchify_cuts_row_by_row_and_unpatchify_inverts_it():
  image = images(n=2, size=12, channels=3)
  patches = np.asarray(patchify(image, 4))
  assert patches.shape == (2, 9, 48)
  # Patch 5 is the second row's third patch: rows 4-7, columns 8-11.
  np.testing.assert_array_equal(patches[:, 5], image[:, 4:8, 8:12].reshape(2, -1))
  np.testing.assert_array_equal(unpatchify(patches, 4), image)
  wide = images(n=1, size=8, channels=2)[:, :4]  # 4x8
  np.testing.assert_array_equal(unpatchify(patchify(wide, 2), 2, height=4, width=8), wide)
  with pytest.raises(ConfigError, match='must divide'):
    patchify(image, 5)


def run_with_prediction(objective, prediction_BxNxP, image, rng, *, garbage_where_visible=False):
  """The objective's loss and metrics with a model that predicts `prediction_BxNxP`.

  Also returns the visible patches that the objective handed to the model. With
  `garbage_where_visible`, the visible patches' predictions are far off.
  """
  seen = []

  def apply_fn(variables, batch, *, train=False, rngs=None):
    seen.append(batch['visible_patches'])
    pred = jnp.asarray(prediction_BxNxP)
    if garbage_where_visible:
      rows = jnp.arange(pred.shape[0])[:, None]
      pred = pred.at[rows, batch['visible_patches']].set(1e3)
    return {'predicted_patches': pred}

  loss, metrics = objective(apply_fn, {}, {'image': image}, rng)
  return loss, metrics, seen[0]


def test_each_example_masks_exactly_round_of_the_ratio():
  image = images(n=8, size=28)  # 49 patches, 36.75 of them at 0.75
  zeros = np.zeros((8, 49, PATCH * PATCH), np.float32)
  objective = masked_image_modeling(patch_size=PATCH)
  visible = np.asarray(jax.jit(lambda x, rng: run_with_prediction(objective, zeros, x, rng)[2])(
      image, jax.random.PRNGKey(3)))
  assert num_masked_patches(49, 0.75) == 37 == round(49 * 0.75)
  assert visible.shape == (8, 49 - 37) and visible.dtype == np.int32
  for row in visible:
    assert (np.diff(row) > 0).all() and row.min() >= 0 and row.max() < 49
  assert len({tuple(row) for row in visible}) > 1  # each example draws its own mask
  visible, masked = random_patch_masks(jax.random.PRNGKey(3), 8, 49, 37)
  assert (np.asarray(masked).sum(1) == 37).all()
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(masked), visible, 1), False)


def test_loss_scores_masked_patches_against_normalised_pixels():
  image = images()
  target = np.asarray(patchify(image, PATCH))
  mean, var = target.mean(-1, keepdims=True), target.var(-1, keepdims=True)
  normalised = (target - mean) / np.sqrt(var + 1e-6)
  objectives = {norm: masked_image_modeling(patch_size=PATCH, norm_pix_loss=norm)
                for norm in (True, False)}
  values = {True: normalised, False: target}

  @jax.jit
  def scores(image, rng):
    out = {}
    for norm, objective in objectives.items():
      # Visible patches do not count: anything goes there.
      exact, _, _ = run_with_prediction(objective, values[norm], image, rng,
                                        garbage_where_visible=True)
      zeros, metrics, visible = run_with_prediction(objective, np.zeros_like(target), image, rng)
      out[norm] = exact, zeros, metrics['loss'], visible
    return out

  for norm, (exact, zeros, metric, visible) in scores(image, jax.random.PRNGKey(0)).items():
    assert float(exact) < 1e-6
    assert metric == zeros
    masked = np.ones((4, N), bool)
    np.put_along_axis(masked, np.asarray(visible), False, 1)
    expected = (values[norm] ** 2).mean(-1)[masked].mean()
    np.testing.assert_allclose(zeros, expected, rtol=1e-5)


def tiny_mae():
  encoder = ViT(image_size=SIZE, patch_size=PATCH, channels=1, hidden=32, depth=1, heads=2,
                mlp_size=64)
  return MaskedAutoencoder(encoder, decoder_hidden=16, decoder_depth=1, decoder_heads=2)


OBJECTIVE = masked_image_modeling(patch_size=PATCH)
# One compilation per batch shape and mode, shared by the tests below.
JIT_OBJECTIVE = jax.jit(OBJECTIVE, static_argnums=0, static_argnames='train')


@pytest.fixture(scope='module')
def mae():
  """A tiny masked autoencoder's `apply_fn`, its initial parameters, and a batch."""
  batch = image_batch(n=8, size=SIZE)
  model = tiny_mae()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)['params']
  return make_apply_fn(model), params, batch


def loss_of(apply_fn, params, batch, seed, *, train):
  return float(JIT_OBJECTIVE(apply_fn, params, batch, jax.random.PRNGKey(seed), train=train)[0])


@pytest.fixture(scope='module')
def gradients(mae):
  """`(params, rng) -> loss, visible patches, gradients wrt the params and the model's input`.

  The model's input is the images plus an offset that the objective's targets
  do not see, so the offset's gradient is what reaches the loss through the model.
  """
  model_apply_fn, _, batch = mae

  def loss_fn(params, offset, rng):
    seen = []

    def apply_fn(variables, model_batch, *, train=False, rngs=None):
      seen.append(model_batch['visible_patches'])
      return model_apply_fn(variables, {**model_batch, 'image': model_batch['image'] + offset},
                            train=train, rngs=rngs)

    loss, _ = OBJECTIVE(apply_fn, params, batch, rng)
    return loss, seen[0]

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))

  def gradients_at(params, rng):
    (loss, visible), (params_grad, input_grad) = grad_fn(params, jnp.zeros_like(batch['image']),
                                                         rng)
    return loss, np.asarray(visible), params_grad, np.asarray(input_grad)

  return gradients_at


def test_masked_pixels_reach_the_loss_only_as_targets(mae, gradients):
  _, params, _ = mae
  _, visible, _, input_grad = gradients(params, jax.random.PRNGKey(1))
  grad = np.asarray(patchify(input_grad, PATCH))
  is_visible = np.zeros((8, N), bool)
  np.put_along_axis(is_visible, visible, True, 1)
  assert is_visible.sum() == 8 * (N - 12)
  assert (grad[~is_visible] == 0).all()  # the encoder never saw them
  assert (np.abs(grad[is_visible]).sum(-1) > 0).all()


def test_loss_is_finite_and_decreases_with_adam(mae, gradients):
  apply_fn, params, batch = mae
  tx = optax.adam(3e-3)

  @jax.jit
  def update(params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  before = loss_of(apply_fn, params, batch, 0, train=False)
  opt_state = tx.init(params)
  for i in range(10):
    loss, _, grads, _ = gradients(params, jax.random.PRNGKey(i))
    assert np.isfinite(float(loss))
    params, opt_state = update(params, grads, opt_state)
  assert loss_of(apply_fn, params, batch, 0, train=False) < 0.9 * before


def test_evaluation_masks_deterministically_and_training_randomly(mae):
  loss = lambda seed, train: loss_of(*mae, seed, train=train)
  assert loss(1, train=False) == loss(2, train=False)
  assert loss(1, train=True) != loss(2, train=True)
  assert loss(1, train=True) == loss(1, train=True)


def test_padding_examples_do_not_change_the_loss(mae):
  apply_fn, params, batch = mae
  padded = {'image': np.concatenate([batch['image'], images(n=3, seed=9)]),
            'label': np.zeros(11, np.int32), 'mask': np.array([1] * 8 + [0] * 3, np.int32)}
  # Training mode: the random masks of the real examples must not move either.
  np.testing.assert_allclose(loss_of(apply_fn, params, padded, 5, train=True),
                             loss_of(apply_fn, params, batch, 5, train=True), rtol=1e-6)


def test_configuration_errors_name_the_fix(mae):
  apply_fn, params, batch = mae
  with pytest.raises(ConfigError, match='mask_ratio'):
    masked_image_modeling(patch_size=PATCH, mask_ratio=1.0)
  with pytest.raises(ConfigError, match='mask_ratio'):
    masked_image_modeling(patch_size=PATCH, mask_ratio=0.01)(
        apply_fn, params, batch, jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="model's patch size"):
    jax.eval_shape(lambda p: masked_image_modeling(patch_size=2)(
        apply_fn, p, batch, jax.random.PRNGKey(0)), params)
