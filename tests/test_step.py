"""Train step: gradient accumulation, clipping, objectives, padding weights."""

import jax
import numpy as np
import optax
import pytest

from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.models import Autoencoder, ConvDecoder, ConvEncoder
from jaxpretrain.objectives import classification, denoising
from jaxpretrain.step import make_eval_step, make_train_step
from tests.helpers import assert_trees_close, image_batch, tiny_classifier

BATCH = image_batch(8)


def _state(model=None, tx=None):
  return create_state(model or tiny_classifier(), identity(), tx=tx or optax.sgd(0.1),
                      rng=jax.random.PRNGKey(0), example_batch=BATCH)


def test_grad_accumulation_equals_one_big_batch():
  one, _ = jax.jit(make_train_step(classification()))(_state(), BATCH)
  four, metrics = jax.jit(make_train_step(classification(), grad_accum=4))(_state(), BATCH)
  assert_trees_close(one.params, four.params, atol=1e-6)
  assert np.isfinite(metrics['loss'])


def test_clip_bounds_the_update():
  state = _state()
  clipped, metrics = jax.jit(make_train_step(classification(), clip=1e-3))(state, BATCH)
  delta = jax.tree.map(lambda a, b: a - b, clipped.params, state.params)
  np.testing.assert_allclose(optax.tree.norm(delta), 0.1 * 1e-3, rtol=1e-4)
  assert metrics['grad_norm'] > 1e-3


def test_padded_examples_weigh_zero():
  padded = {k: np.concatenate([v, v[:4]]) for k, v in BATCH.items()}
  padded['label'][8:] = (padded['label'][8:] + 1) % 3
  padded['mask'] = np.array([1] * 8 + [0] * 4, np.float32)
  step = jax.jit(make_train_step(classification()))
  a, ma = step(_state(), BATCH)
  b, mb = step(_state(), padded)
  assert_trees_close(a.params, b.params, atol=1e-6)
  np.testing.assert_allclose(ma['loss'], mb['loss'], rtol=1e-6)


def test_denoising_autoencoder_shapes_and_learning():
  model = Autoencoder(ConvEncoder(stages=((4,), (8,)), norm=None),
                      ConvDecoder(widths=(4,), out_size=8))
  state = _state(model, optax.adam(1e-2))
  out = state.apply_fn(state.variables(), BATCH, train=False)
  assert out['reconstruction'].shape == BATCH['image'].shape
  assert out['features'].shape == (8, 8)
  step = jax.jit(make_train_step(denoising(noise_std=0.2, drop_prob=0.1)))
  evaluate = jax.jit(make_eval_step(denoising()))
  before = float(evaluate(state, BATCH)['loss'])
  for _ in range(30):
    state, metrics = step(state, BATCH)
  assert np.isfinite(metrics['loss'])
  assert float(evaluate(state, BATCH)['loss']) < 0.5 * before


@pytest.mark.parametrize('out_size, out_channels', [(6, 1), (8, 3)])
def test_a_reconstruction_of_another_shape_than_the_images_is_a_config_error(
    out_size, out_channels):
  model = Autoencoder(ConvEncoder(stages=((4,), (8,)), norm=None),
                      ConvDecoder(widths=(4,), out_size=out_size, out_channels=out_channels))
  state = _state(model)
  height, width, channels = BATCH['image'].shape[1:]
  with pytest.raises(ConfigError, match=rf'reconstructs images of shape \({out_size}, '
                                        rf'{out_size}, {out_channels}\).*out_size=\({height}, '
                                        rf'{width}\) and out_channels={channels}'):
    make_eval_step(denoising())(state, BATCH)


def test_step_returns_new_state_and_leaves_old_untouched():
  state = _state()
  new, _ = jax.jit(make_train_step(classification()))(state, BATCH)
  assert int(new.step) == 1 and int(state.step) == 0
  assert not np.array_equal(new.rng, state.rng)
