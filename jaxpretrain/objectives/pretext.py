"""Pretext tasks: labels made from the images themselves."""

import jax
import jax.numpy as jnp

from jaxpretrain.objectives.common import Objective
from jaxpretrain.objectives.supervised import classification


def rotate90(images_BxHxWxC: jax.Array, k_B: jax.Array) -> jax.Array:
  """Rotates each (square) image by `k` quarter turns counter-clockwise."""
  rotations = jnp.stack([jnp.rot90(images_BxHxWxC, k, axes=(1, 2)) for k in range(4)])
  return rotations[k_B % 4, jnp.arange(images_BxHxWxC.shape[0])]


def rotation_prediction(*, image_key: str = 'image', logits_key: str = 'logits') -> Objective:
  """Predict which of four quarter turns was applied to each image (Gidaris et al., 2018).

  The model sees every image rotated by a random multiple of 90 degrees (in
  evaluation, image i by i mod 4 quarter turns, so scores are deterministic) and
  classifies the rotation with 4-way cross-entropy. Labels are never read.

  Returns:
    An objective whose metrics are `loss` and `accuracy` (of the rotation).
  """
  classify = classification(label_key='_rotation', logits_key=logits_key)

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    rot_rng, model_rng = jax.random.split(rng)
    images = batch[image_key]
    n = images.shape[0]
    k_B = jax.random.randint(rot_rng, (n,), 0, 4) if train else jnp.arange(n) % 4
    rotated = {**batch, image_key: rotate90(images, k_B), '_rotation': k_B}
    return classify(apply_fn, params, rotated, model_rng, model_state=model_state, train=train)

  return objective
