"""Pure, jittable image augmentation, applied on device per example.

An augmentation is a function `(image_HxWxC, rng) -> image_HxWxC`; `compose`
chains them and `apply_to_batch` runs one over a batch with a key per example.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def random_translate(max_shift: int) -> Augment:
  """Shifts the image by up to `max_shift` pixels each way, filling with zeros."""

  def augment(image, rng):
    h, w, _ = image.shape
    padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = jax.random.randint(rng, (2,), 0, 2 * max_shift + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[-1]))

  return augment


def random_flip_left_right(prob: float = 0.5) -> Augment:
  """Mirrors the image horizontally with probability `prob`."""

  def augment(image, rng):
    return jnp.where(jax.random.bernoulli(rng, prob), image[:, ::-1], image)

  return augment


def random_erase(prob: float = 0.5, max_size: int = 10) -> Augment:
  """Zeroes a random square of up to `max_size` pixels with probability `prob`."""

  def augment(image, rng):
    h, w, _ = image.shape
    k_apply, k_size, k_y, k_x = jax.random.split(rng, 4)
    size = jax.random.randint(k_size, (), 1, max_size + 1)
    y = jax.random.randint(k_y, (), 0, h)
    x = jax.random.randint(k_x, (), 0, w)
    yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = (yy >= y) & (yy < y + size) & (xx >= x) & (xx < x + size)
    erase = inside[..., None] & jax.random.bernoulli(k_apply, prob)
    return jnp.where(erase, 0.0, image)

  return augment


def compose(*augments: Augment) -> Augment:
  """Applies augmentations in order, each with its own key."""

  def augment(image, rng):
    for a, key in zip(augments, jax.random.split(rng, max(len(augments), 1))):
      image = a(image, key)
    return image

  return augment


def apply_to_batch(augment: Augment, images_BxHxWxC: jax.Array, rng: jax.Array) -> jax.Array:
  """Runs `augment` on every image of a batch, each with its own key."""
  keys = jax.random.split(rng, images_BxHxWxC.shape[0])
  return jax.vmap(augment)(images_BxHxWxC, keys)


def standard(max_shift: int = 2, flip: bool = True) -> Augment:
  """Light augmentation for small grayscale images: translation and mirroring."""
  parts = [random_translate(max_shift)] if max_shift else []
  if flip:
    parts.append(random_flip_left_right())
  return compose(*parts)
