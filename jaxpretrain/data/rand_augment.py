"""RandAugment (Cubuk et al., 2020): a few ops per image, drawn from one fixed list.

Each image gets `num_ops` ops, each chosen uniformly from the list below and
applied at a magnitude `m` in [0, 1], fixed or drawn per op (FixMatch's variant).
Signed ops go either way at random. For images in [0, 1]:

| op | at magnitude m |
|---|---|
| identity, autocontrast, equalize | (no magnitude) |
| brightness, contrast, sharpness; saturation on RGB | factor 1 ± 0.9 m |
| solarize | values above 1 - m inverted |
| posterize | 8 - round(4 m) bits kept |
| rotate | ± 30 m degrees |
| shear_x, shear_y | ± 0.3 m |
| translate_x, translate_y | ± 0.3 m of the image size |

At magnitude 0 every op but autocontrast and equalize is the identity. Under
`vmap` a random choice computes every candidate and keeps one, so the five
geometric ops share one resampling (their matrices are chosen, not their
images), and only the cheap elementwise colour ops are computed side by side.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpretrain.data import augment as augment_lib
from jaxpretrain.data.augment import Augment

MAX_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.3  # of the image's height or width
MAX_FACTOR_CHANGE = 0.9
GEOMETRIC_OPS = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')

# A colour op: (image, signed magnitude) -> image.
_ColourOp = Callable[[jax.Array, jax.Array], jax.Array]


def autocontrast(image_HxWxC: jax.Array) -> jax.Array:
  """Stretches each channel to span [0, 1]; a flat channel is left as it is."""
  low = jnp.min(image_HxWxC, axis=(0, 1), keepdims=True)
  high = jnp.max(image_HxWxC, axis=(0, 1), keepdims=True)
  span = high - low
  stretched = (image_HxWxC - low) / jnp.where(span > 0, span, 1.0)
  return jnp.where(span > 0, stretched, image_HxWxC)


def _equalize_channel(values_N: jax.Array) -> jax.Array:
  # A 256-bin histogram by scatter-add: sorting each image is ten times slower on CPU.
  levels_N = jnp.round(jnp.clip(values_N, 0.0, 1.0) * 255.0).astype(jnp.int32)
  cdf_256 = jnp.cumsum(jnp.zeros(256).at[levels_N].add(1.0)) / values_N.shape[0]
  # Each value goes to the fraction of pixels at or below its level, the darkest to 0.
  darkest = cdf_256[jnp.min(levels_N)]
  rest = 1.0 - darkest
  return jnp.where(rest > 0, (cdf_256[levels_N] - darkest) / jnp.where(rest > 0, rest, 1.0),
                   values_N)


def equalize(image_HxWxC: jax.Array) -> jax.Array:
  """Histogram equalisation of each channel at 8 bits: levels spread evenly over [0, 1]."""
  h, w, c = image_HxWxC.shape
  flat_NxC = image_HxWxC.reshape(h * w, c)
  return jax.vmap(_equalize_channel, in_axes=1, out_axes=1)(flat_NxC).reshape(
      h, w, c).astype(image_HxWxC.dtype)


def solarize(image_HxWxC: jax.Array, threshold: jax.typing.ArrayLike) -> jax.Array:
  """Inverts (`1 - v`) every value above `threshold`; 1 leaves the image as it is."""
  return jnp.where(image_HxWxC > threshold, 1.0 - image_HxWxC, image_HxWxC)


def posterize(image_HxWxC: jax.Array, bits: jax.typing.ArrayLike) -> jax.Array:
  """Keeps the top `bits` of each 8-bit value (8 leaves 8-bit images unchanged)."""
  levels = jnp.round(image_HxWxC * 255.0)
  step = 2.0 ** (8 - jnp.asarray(bits, jnp.float32))
  return (jnp.floor(levels / step) * step / 255.0).astype(image_HxWxC.dtype)


def sharpen(image_HxWxC: jax.Array, factor: jax.typing.ArrayLike) -> jax.Array:
  """Moves the image away from (factor > 1) or towards (< 1) its 3x3 blur; 1 is the image."""
  blurred = augment_lib.blur(image_HxWxC, 1.0, 3)
  return jnp.clip(blurred + factor * (image_HxWxC - blurred), 0.0, 1.0)


def _factor(signed_m: jax.Array) -> jax.Array:
  return 1.0 + MAX_FACTOR_CHANGE * signed_m


def _colour_ops(channels: int) -> list[_ColourOp]:
  ops: list[_ColourOp] = [
      lambda x, s: x,
      lambda x, s: autocontrast(x),
      lambda x, s: equalize(x),
      lambda x, s: augment_lib.adjust_brightness(x, _factor(s)),
      lambda x, s: augment_lib.adjust_contrast(x, _factor(s)),
      lambda x, s: sharpen(x, _factor(s)),
      lambda x, s: solarize(x, 1.0 - jnp.abs(s)),
      lambda x, s: posterize(x, 8 - jnp.round(4 * jnp.abs(s))),
  ]
  if channels == 3:
    ops.append(lambda x, s: augment_lib.adjust_saturation(x, _factor(s)))
  return ops


def _geometric_maps(signed_m: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """The identity, then one `affine_transform` (matrix, offset) per geometric op."""
  eye, zero = jnp.eye(2), jnp.zeros(2)
  shear = MAX_SHEAR * signed_m
  shift = MAX_TRANSLATE * signed_m
  maps = [
      (eye, zero),
      (augment_lib.rotation_matrix(MAX_DEGREES * signed_m), zero),
      (eye.at[1, 0].set(shear), zero),  # shear_x: column read = x + shear * y
      (eye.at[0, 1].set(shear), zero),  # shear_y: row read = y + shear * x
      (eye, jnp.stack([0.0, -shift * width])),  # translate_x
      (eye, jnp.stack([-shift * height, 0.0])),  # translate_y
  ]
  return jnp.stack([m for m, _ in maps]), jnp.stack([t for _, t in maps])


def rand_augment(num_ops: int = 2, magnitude: float | None = None,
                 fill: str = 'zero') -> Augment:
  """RandAugment: `num_ops` ops per image from the list in this module's docstring.

  Args:
    num_ops: ops applied in turn to each image; 0 is the identity.
    magnitude: every op's magnitude in [0, 1]; `None` draws it uniformly per op.
    fill: what geometric ops read from outside the image: `'zero'` or `'edge'`.
  """
  if num_ops < 0:
    raise ValueError(f'num_ops must be at least 0, got {num_ops}')
  if magnitude is not None and not 0.0 <= magnitude <= 1.0:
    raise ValueError(f'magnitude must be in [0, 1] or None (random), got {magnitude}')
  augment_lib.check_fill(fill)
  if not num_ops:
    return augment_lib.compose()

  def augment(image, rng):
    h, w, _ = image.shape
    colour_ops = _colour_ops(image.shape[-1])
    num_geometric = len(GEOMETRIC_OPS)
    for key in jax.random.split(rng, num_ops):
      k_op, k_magnitude, k_sign = jax.random.split(key, 3)
      op = jax.random.randint(k_op, (), 0, num_geometric + len(colour_ops))
      m = (jnp.float32(magnitude) if magnitude is not None
           else jax.random.uniform(k_magnitude, ()))
      signed = jnp.where(jax.random.bernoulli(k_sign), m, -m)
      matrices, offsets = _geometric_maps(signed, h, w)
      geometric = jnp.where(op < num_geometric, op + 1, 0)
      image = augment_lib.affine_transform(image, matrices[geometric], offsets[geometric], fill)
      colour = jnp.where(op < num_geometric, 0, op - num_geometric)
      # Clipped because XLA:CPU in JAX 0.7 computes some ops a hair outside [0, 1].
      image = jnp.clip(jnp.stack([f(image, signed) for f in colour_ops])[colour], 0.0, 1.0)
    return image

  return augment


def fixmatch_strong(num_ops: int = 2, magnitude: float | None = None, max_shift: int = 2,
                    erase_prob: float = 1.0, erase_size: int | None = None) -> Augment:
  """FixMatch's strong view: flip and shift, RandAugment, then erasing (Cutout).

  Args:
    num_ops: RandAugment ops per image.
    magnitude: RandAugment magnitude in [0, 1]; `None` draws it per op.
    max_shift: largest shift in pixels of the flip-and-shift first step.
    erase_prob: chance of erasing a square.
    erase_size: the square's largest side in pixels; by default half the
      image height (28 -> 14), as in the paper.
  """

  def augment(image, rng):
    size = erase_size if erase_size is not None else image.shape[0] // 2
    return augment_lib.compose(
        augment_lib.standard(max_shift), rand_augment(num_ops, magnitude),
        augment_lib.random_erase(erase_prob, size))(image, rng)

  return augment
