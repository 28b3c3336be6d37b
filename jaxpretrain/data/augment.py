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


def random_resized_crop(scale: tuple[float, float] = (0.6, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip_prob: float = 0.0) -> Augment:
  """Crops a random box (area fraction in `scale`, aspect in `ratio`), resized back.

  Sampling is bilinear; outside the image counts as zero. With `flip_prob`, the
  sampling grid is mirrored left-right: a flip fused into the same gather.
  """

  def augment(image, rng):
    h, w, c = image.shape
    k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(rng, 5)
    area = jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (), minval=jnp.log(ratio[0]),
                                        maxval=jnp.log(ratio[1])))
    crop_h = jnp.clip(jnp.sqrt(area / aspect), 0.1, 1.0) * h
    crop_w = jnp.clip(jnp.sqrt(area * aspect), 0.1, 1.0) * w
    center_y = jax.random.uniform(k_y) * (h - crop_h) + crop_h / 2
    center_x = jax.random.uniform(k_x) * (w - crop_w) + crop_w / 2
    grid_y = center_y + ((jnp.arange(h) + 0.5) / h - 0.5)[:, None] * crop_h - 0.5
    direction = jnp.where(jax.random.bernoulli(k_flip, flip_prob), -1.0, 1.0)
    grid_x = center_x + direction * ((jnp.arange(w) + 0.5) / w - 0.5)[None, :] * crop_w - 0.5
    coords = [jnp.broadcast_to(grid_y, (h, w)), jnp.broadcast_to(grid_x, (h, w))]
    channels = [jax.scipy.ndimage.map_coordinates(image[..., i], coords, order=1,
                                                  mode='constant', cval=0.0) for i in range(c)]
    return jnp.stack(channels, axis=-1)

  return augment


def brightness_contrast(brightness: float = 0.15, contrast: float = 0.4) -> Augment:
  """Scales contrast around the image mean by 1 ± `contrast` and shifts by ± `brightness`."""

  def augment(image, rng):
    k_c, k_b = jax.random.split(rng)
    scale = jax.random.uniform(k_c, (), minval=1 - contrast, maxval=1 + contrast)
    shift = jax.random.uniform(k_b, (), minval=-brightness, maxval=brightness)
    mean = jnp.mean(image)
    return (image - mean) * scale + mean + shift

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


def crop_flip_jitter(scale: tuple[float, float] = (0.6, 1.0), brightness: float = 0.15,
                     contrast: float = 0.4) -> Augment:
  """Stronger augmentation for self-supervised pre-training: resized crop, flip, jitter."""
  return compose(random_resized_crop(scale, flip_prob=0.5),
                 brightness_contrast(brightness, contrast))
