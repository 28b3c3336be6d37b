"""Reconstruction objectives: denoising autoencoders."""

import jax
import jax.numpy as jnp

from jaxpretrain.errors import ConfigError
from jaxpretrain.objectives.common import Objective, call_model, weighted_mean


def corrupt(image: jax.Array, rng: jax.Array, *, noise_std: float,
            drop_prob: float) -> jax.Array:
  """Adds Gaussian noise and zeroes a random fraction of pixels, clipped to [0, 1]."""
  noise_rng, drop_rng = jax.random.split(rng)
  x = image + noise_std * jax.random.normal(noise_rng, image.shape, image.dtype)
  keep = jax.random.bernoulli(drop_rng, 1.0 - drop_prob, image.shape)
  return jnp.clip(jnp.where(keep, x, 0.0), 0.0, 1.0)


def denoising(*, noise_std: float = 0.3, drop_prob: float = 0.25,
              image_key: str = 'image') -> Objective:
  """Mean squared error between the reconstruction of a corrupted image and the clean one.

  Args:
    noise_std: standard deviation of the additive Gaussian noise (in training only).
    drop_prob: fraction of pixels set to zero (in training only).
    image_key: batch key of the clean images.

  Returns:
    An objective whose metrics are `loss` (per-pixel MSE).
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    corrupt_rng, model_rng = jax.random.split(rng)
    image = batch[image_key]
    corrupted = (corrupt(image, corrupt_rng, noise_std=noise_std, drop_prob=drop_prob)
                 if train else image)
    outputs, metrics = call_model(apply_fn, params, {**batch, 'corrupted': corrupted},
                                  model_rng, model_state=model_state, train=train)
    reconstruction = outputs['reconstruction'].astype(jnp.float32)
    if reconstruction.shape != image.shape:  # Broadcasting would hide a channel mismatch.
      *_, height, width, channels = image.shape
      raise ConfigError(f'the decoder reconstructs images of shape {reconstruction.shape[1:]}, '
                        f'but the batch holds {image.shape[1:]}: give the decoder '
                        f'out_size=({height}, {width}) and out_channels={channels}')
    err = (reconstruction - image) ** 2
    loss = weighted_mean(jnp.mean(err.reshape(err.shape[0], -1), axis=-1), batch)
    return loss, {**metrics, 'loss': loss}

  return objective
