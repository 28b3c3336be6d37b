"""Pure, jittable image augmentation, applied on device per example.

An augmentation is a function `(image_HxWxC, rng) -> image_HxWxC`; `compose`
chains them and `apply_to_batch` runs one over a batch with a key per example.
Images are float in [0, 1]: the colour ops clip to that range (their results can
leave it; `brightness_contrast`, older, does not), while geometric ops, blur and
resizing interpolate between existing pixels and so keep it. Colour ops read 3 channels as RGB; on 1-channel images
saturation, hue and grayscale are the identity.

Each `adjust_*`, `rotate`, `blur` and `to_grayscale` is the deterministic op; the
`random_*` factories and the colour factories draw its strength from the key.
"""

from collections.abc import Callable, Sequence
import math

import jax
import jax.numpy as jnp
import numpy as np

Augment = Callable[[jax.Array, jax.Array], jax.Array]

# ITU-R BT.601 luma, as in PIL's and torchvision's grayscale.
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (FCC NTSC). The I and Q rows sum to zero, so grays have no chroma and
# a hue rotation leaves them exactly as they were.
_RGB_TO_YIQ = np.array([_LUMA, (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112)])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
# A hue rotation by theta in the IQ plane is `_HUE_FIXED + cos(theta) * _HUE_COS +
# sin(theta) * _HUE_SIN` in RGB: the three parts of `inv(T) @ R(theta) @ T`.
_HUE_FIXED = (_YIQ_TO_RGB @ np.diag([1.0, 0.0, 0.0]) @ _RGB_TO_YIQ).astype(np.float32)
_HUE_COS = (_YIQ_TO_RGB @ np.diag([0.0, 1.0, 1.0]) @ _RGB_TO_YIQ).astype(np.float32)
_HUE_SIN = (_YIQ_TO_RGB @ np.array([[0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
            @ _RGB_TO_YIQ).astype(np.float32)

# Fill names -> `map_coordinates` modes for pixels sampled from outside the image.
_FILL_MODES = {'zero': 'constant', 'edge': 'nearest'}
# Resize methods; those whose kernels have negative lobes can overshoot.
_RESIZE_METHODS = {'nearest': False, 'bilinear': False, 'bicubic': True, 'lanczos3': True,
                   'lanczos5': True}


def _identity(image: jax.Array, rng: jax.Array) -> jax.Array:
  del rng
  return image


def _clip_unit(image: jax.Array) -> jax.Array:
  return jnp.clip(image, 0.0, 1.0)


def _channels(image: jax.Array) -> int:
  """The channel count, checked to be 1 (gray) or 3 (RGB) for the colour ops."""
  c = image.shape[-1]
  if c not in (1, 3):
    raise ValueError(f'colour augmentation needs 1 or 3 channels, got {c}')
  return c


def _luma(image_HxWxC: jax.Array) -> jax.Array:
  """Luma as an HxWx1 array (the image itself when it has one channel)."""
  if _channels(image_HxWxC) == 1:
    return image_HxWxC
  # An elementwise sum, not a matmul: exact on accelerators whose default matmul
  # precision is bfloat16.
  weights = jnp.asarray(_LUMA, image_HxWxC.dtype)
  return jnp.sum(image_HxWxC * weights, axis=-1, keepdims=True)


def _sample(image_HxWxC: jax.Array, y_HxW: jax.Array, x_HxW: jax.Array,
            mode: str = 'constant') -> jax.Array:
  """Bilinear samples of every channel at fractional pixel coordinates."""
  coords = [y_HxW, x_HxW]
  channels = [jax.scipy.ndimage.map_coordinates(image_HxWxC[..., i], coords, order=1,
                                                mode=mode, cval=0.0)
              for i in range(image_HxWxC.shape[-1])]
  return jnp.stack(channels, axis=-1)


def _factor_range(strength: float) -> tuple[float, float]:
  """Where colour factors are drawn: [max(0, 1 - strength), 1 + strength]."""
  return max(0.0, 1.0 - strength), 1.0 + strength


def _check_hue(max_delta: float) -> None:
  if not 0.0 <= max_delta <= 0.5:
    raise ValueError(f'hue max_delta must be in [0, 0.5] turns, got {max_delta}')


# Geometry.

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


def random_flip_up_down(prob: float = 0.5) -> Augment:
  """Mirrors the image vertically with probability `prob`."""

  def augment(image, rng):
    return jnp.where(jax.random.bernoulli(rng, prob), image[::-1], image)

  return augment


def check_fill(fill: str) -> None:
  """Raises ValueError unless `fill` names a way to read outside the image."""
  if fill not in _FILL_MODES:
    raise ValueError(f'unknown fill {fill!r}; choose one of {sorted(_FILL_MODES)}')


def affine_transform(image_HxWxC: jax.Array, matrix_2x2: jax.typing.ArrayLike,
                     offset: jax.typing.ArrayLike = (0.0, 0.0), fill: str = 'zero') -> jax.Array:
  """Resamples the image bilinearly under an affine map about its centre.

  The output pixel at `(y, x)` from the centre reads the input at
  `matrix_2x2 @ (y, x) + offset` from the centre: the matrix is the inverse of the
  visible motion, and an offset of `(0, -2)` moves the content 2 pixels right.

  Args:
    image_HxWxC: the image.
    matrix_2x2: the (row, column) map from output to input coordinates.
    offset: (row, column) shift added to the input coordinates, in pixels.
    fill: what pixels from outside the image read: `'zero'` or `'edge'` (the
      nearest border pixel).

  Returns:
    The resampled image, same shape.
  """
  check_fill(fill)
  h, w, _ = image_HxWxC.shape
  m = jnp.asarray(matrix_2x2, jnp.float32)
  t = jnp.asarray(offset, jnp.float32)
  dy = (jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2)[:, None]
  dx = (jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2)[None, :]
  y = (h - 1) / 2 + m[0, 0] * dy + m[0, 1] * dx + t[0]
  x = (w - 1) / 2 + m[1, 0] * dy + m[1, 1] * dx + t[1]
  return _sample(image_HxWxC, y, x, _FILL_MODES[fill]).astype(image_HxWxC.dtype)


def rotation_matrix(degrees: jax.typing.ArrayLike) -> jax.Array:
  """The `affine_transform` matrix that turns an image counter-clockwise by `degrees`."""
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Each output pixel reads the input where the inverse rotation takes it.
  return jnp.stack([jnp.stack([cos, sin]), jnp.stack([-sin, cos])])


def rotate(image_HxWxC: jax.Array, degrees: jax.typing.ArrayLike,
           fill: str = 'zero') -> jax.Array:
  """Rotates the image counter-clockwise about its centre, sampling bilinearly.

  Args:
    image_HxWxC: the image.
    degrees: the angle; 90 on a square image is `jnp.rot90`.
    fill: what pixels from outside the image read: `'zero'` or `'edge'` (the
      nearest border pixel).

  Returns:
    The rotated image, same shape.
  """
  return affine_transform(image_HxWxC, rotation_matrix(degrees), fill=fill)


def random_rotation(max_degrees: float, fill: str = 'zero') -> Augment:
  """Rotates by an angle drawn uniformly from [-max_degrees, max_degrees] (see `rotate`)."""
  check_fill(fill)
  if not max_degrees:
    return _identity

  def augment(image, rng):
    angle = jax.random.uniform(rng, (), minval=-max_degrees, maxval=max_degrees)
    return rotate(image, angle, fill)

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
    h, w, _ = image.shape
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
    return _sample(image, jnp.broadcast_to(grid_y, (h, w)), jnp.broadcast_to(grid_x, (h, w)))

  return augment


def resize(height: int, width: int, method: str = 'bilinear', *,
           antialias: bool = True) -> Augment:
  """Resizes to `height` x `width` (changes the shape; the key is unused).

  Args:
    height: output height.
    width: output width.
    method: `'nearest'`, `'bilinear'`, `'bicubic'`, `'lanczos3'` or `'lanczos5'`
      (`jax.image.resize`). The last three can overshoot at edges, so their
      result is clipped to the input image's own range of values.
    antialias: low-pass filter when downsampling.
  """
  if method not in _RESIZE_METHODS:
    raise ValueError(f'unknown resize method {method!r}; choose one of {list(_RESIZE_METHODS)}')
  overshoots = _RESIZE_METHODS[method]

  def augment(image, rng):
    del rng
    out = jax.image.resize(image, (height, width, image.shape[-1]), method=method,
                           antialias=antialias)
    return jnp.clip(out, jnp.min(image), jnp.max(image)) if overshoots else out

  return augment


# Colour. Each colour op is affine per pixel, `clip(A_CxC @ pixel + c * mean luma, 0, 1)`,
# so that `color_jitter` can order its ops at random by indexing their stacked (A, c)
# rather than by branching: under vmap every branch of a switch would run.

_Affine = tuple[jax.Array, jax.Array]  # (A_CxC, c)


def _eye(channels: int) -> jax.Array:
  return jnp.eye(channels, dtype=jnp.float32)


def _brightness_affine(factor: jax.typing.ArrayLike, channels: int) -> _Affine:
  return factor * _eye(channels), jnp.zeros((), jnp.float32)


def _contrast_affine(factor: jax.typing.ArrayLike, channels: int) -> _Affine:
  return factor * _eye(channels), jnp.asarray(1 - factor, jnp.float32)


def _saturation_affine(factor: jax.typing.ArrayLike, channels: int) -> _Affine:
  if channels == 1:
    return _eye(1), jnp.zeros((), jnp.float32)
  # Each channel keeps `factor` of itself and takes the rest from the pixel's luma.
  luma_3x3 = jnp.broadcast_to(jnp.asarray(_LUMA, jnp.float32), (3, 3))
  return factor * _eye(3) + (1 - factor) * luma_3x3, jnp.zeros((), jnp.float32)


def _hue_affine(delta: jax.typing.ArrayLike, channels: int) -> _Affine:
  if channels == 1:
    return _eye(1), jnp.zeros((), jnp.float32)
  theta = 2 * jnp.pi * jnp.asarray(delta, jnp.float32)
  return (_HUE_FIXED + jnp.cos(theta) * _HUE_COS + jnp.sin(theta) * _HUE_SIN,
          jnp.zeros((), jnp.float32))


def _apply_affine(image_HxWxC: jax.Array, a_CxC: jax.Array, c: jax.Array) -> jax.Array:
  # A few multiply-adds per pixel, kept at full precision on every backend.
  out = jnp.einsum('hwc,dc->hwd', image_HxWxC, a_CxC.astype(image_HxWxC.dtype),
                   precision=jax.lax.Precision.HIGHEST)
  return _clip_unit(out + c.astype(image_HxWxC.dtype) * jnp.mean(_luma(image_HxWxC)))


def adjust_brightness(image_HxWxC: jax.Array, factor: jax.typing.ArrayLike) -> jax.Array:
  """Multiplies every value by `factor` (0 gives black, 1 the image)."""
  return _apply_affine(image_HxWxC, *_brightness_affine(factor, _channels(image_HxWxC)))


def adjust_contrast(image_HxWxC: jax.Array, factor: jax.typing.ArrayLike) -> jax.Array:
  """Scales the distance from the image's mean luma by `factor` (0 gives flat gray)."""
  return _apply_affine(image_HxWxC, *_contrast_affine(factor, _channels(image_HxWxC)))


def adjust_saturation(image_HxWxC: jax.Array, factor: jax.typing.ArrayLike) -> jax.Array:
  """Scales each pixel's distance from its own luma by `factor` (0 gives grayscale)."""
  return _apply_affine(image_HxWxC, *_saturation_affine(factor, _channels(image_HxWxC)))


def adjust_hue(image_HxWxC: jax.Array, delta: jax.typing.ArrayLike) -> jax.Array:
  """Rotates hue by `delta` turns (1 is a full turn) in the YIQ chroma plane.

  The rotation keeps luma (Y) and chroma magnitude; only colours it pushes out of
  the RGB cube change by clipping. Grays are unchanged.
  """
  return _apply_affine(image_HxWxC, *_hue_affine(delta, _channels(image_HxWxC)))


def to_grayscale(image_HxWxC: jax.Array) -> jax.Array:
  """Luma (0.299 R + 0.587 G + 0.114 B) repeated over the image's channels."""
  return jnp.broadcast_to(_luma(image_HxWxC), image_HxWxC.shape)


def _random_adjust(adjust: Callable[[jax.Array, jax.Array], jax.Array], low: float,
                   high: float) -> Augment:
  """`adjust(image, v)` with `v` drawn uniformly from [low, high]."""

  def augment(image, rng):
    return adjust(image, jax.random.uniform(rng, (), minval=low, maxval=high))

  return augment


def brightness(strength: float) -> Augment:
  """`adjust_brightness` by a factor drawn from [max(0, 1 - strength), 1 + strength]."""
  return _random_adjust(adjust_brightness, *_factor_range(strength)) if strength else _identity


def contrast(strength: float) -> Augment:
  """`adjust_contrast` by a factor drawn from [max(0, 1 - strength), 1 + strength]."""
  return _random_adjust(adjust_contrast, *_factor_range(strength)) if strength else _identity


def saturation(strength: float) -> Augment:
  """`adjust_saturation` by a factor drawn from [max(0, 1 - strength), 1 + strength]."""
  return _random_adjust(adjust_saturation, *_factor_range(strength)) if strength else _identity


def hue(max_delta: float) -> Augment:
  """`adjust_hue` by a shift drawn from [-max_delta, max_delta] turns (at most 0.5)."""
  _check_hue(max_delta)
  return _random_adjust(adjust_hue, -max_delta, max_delta) if max_delta else _identity


def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, *, prob: float = 0.8, random_order: bool = True) -> Augment:
  """With probability `prob`, jitters brightness, contrast, saturation and hue.

  The factors are drawn as by the `brightness`, `contrast`, `saturation` and `hue`
  augmentations, and each op clips as its `adjust_*` does; an op of zero strength
  is left out.

  Args:
    brightness: brightness strength.
    contrast: contrast strength.
    saturation: saturation strength.
    hue: largest hue shift in turns, at most 0.5.
    prob: chance that an image is jittered at all.
    random_order: apply the ops in a random order per image (as SimCLR and
      torchvision do); otherwise brightness, contrast, saturation, hue.
  """
  _check_hue(hue)
  ops = [(affine, low, high) for affine, strength, (low, high) in (
      (_brightness_affine, brightness, _factor_range(brightness)),
      (_contrast_affine, contrast, _factor_range(contrast)),
      (_saturation_affine, saturation, _factor_range(saturation)),
      (_hue_affine, hue, (-hue, hue))) if strength]
  if not ops or not prob:
    return _identity
  n = len(ops)

  def augment(image, rng):
    channels = _channels(image)
    # One draw for everything: whether to jitter, each op's factor, and the order.
    u = jax.random.uniform(rng, (1 + 2 * n,))
    affines = [affine(low + (high - low) * u[1 + i], channels)
               for i, (affine, low, high) in enumerate(ops)]
    a_NxCxC = jnp.stack([a for a, _ in affines])
    c_N = jnp.stack([c for _, c in affines])
    order = jnp.argsort(u[1 + n:]) if random_order else range(n)
    jittered = image
    for i in range(n):
      jittered = _apply_affine(jittered, a_NxCxC[order[i]], c_N[order[i]])
    return jnp.where(u[0] < prob, jittered, image)

  return augment


def random_grayscale(prob: float = 0.2) -> Augment:
  """Replaces the image by `to_grayscale` with probability `prob`, keeping its channels."""

  def augment(image, rng):
    return jnp.where(jax.random.bernoulli(rng, prob), to_grayscale(image), image)

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


# Filtering and value scaling.

def _gaussian_kernel(sigma: jax.Array, size: int) -> jax.Array:
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  # A vanishing sigma gives the one-hot kernel: exactly the identity.
  weights = jnp.exp(-0.5 * jnp.square(x / jnp.maximum(sigma, 1e-6)))
  return weights / jnp.sum(weights)


def _convolve_axis(image_HxWxC: jax.Array, kernel_K: jax.Array, axis: int) -> jax.Array:
  """Same-size 1-D convolution along `axis`, the border pixels repeated outward."""
  size, n = kernel_K.shape[0], image_HxWxC.shape[axis]
  pad = [(0, 0)] * image_HxWxC.ndim
  pad[axis] = (size // 2, size // 2)
  padded = jnp.pad(image_HxWxC, pad, mode='edge')
  return sum(kernel_K[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
             for i in range(size))


def blur(image_HxWxC: jax.Array, sigma: jax.typing.ArrayLike, kernel_size: int) -> jax.Array:
  """Gaussian blur of standard deviation `sigma` pixels, separable, borders repeated.

  Args:
    image_HxWxC: the image.
    sigma: standard deviation in pixels; 0 leaves the image as it is.
    kernel_size: odd number of taps per axis.

  Returns:
    The blurred image: a convex combination of pixels, so within the input's range.
  """
  if kernel_size % 2 != 1:
    raise ValueError(f'kernel_size must be odd, got {kernel_size}')
  kernel = _gaussian_kernel(jnp.asarray(sigma, jnp.float32), kernel_size).astype(image_HxWxC.dtype)
  return _convolve_axis(_convolve_axis(image_HxWxC, kernel, 0), kernel, 1)


def gaussian_blur(sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int | None = None,
                  prob: float = 0.5) -> Augment:
  """With probability `prob`, `blur` with sigma drawn uniformly from the `sigma` range.

  Args:
    sigma: (min, max) standard deviation in pixels.
    kernel_size: odd taps per axis; by default `2 * ceil(3 * max sigma) + 1`, which
      keeps over 99.7% of the widest kernel's mass.
    prob: chance that an image is blurred.
  """
  if kernel_size is None:
    kernel_size = 2 * math.ceil(3 * sigma[1]) + 1
  if kernel_size % 2 != 1:
    raise ValueError(f'kernel_size must be odd, got {kernel_size}')
  if not prob or not sigma[1]:
    return _identity

  def augment(image, rng):
    u = jax.random.uniform(rng, (2,))
    s = sigma[0] + (sigma[1] - sigma[0]) * u[1]
    return jnp.where(u[0] < prob, blur(image, s, kernel_size), image)

  return augment


def normalize(mean: float | Sequence[float], std: float | Sequence[float]) -> Augment:
  """`(image - mean) / std`, per channel (the key is unused); leaves [0, 1] on purpose."""
  mean_C = np.asarray(mean, np.float32)
  inv_std_C = 1.0 / np.asarray(std, np.float32)

  def augment(image, rng):
    del rng
    return ((image - mean_C) * inv_std_C).astype(image.dtype)

  return augment


# Combinators and pipelines.

def random_apply(augment: Augment, prob: float) -> Augment:
  """Applies `augment` with probability `prob`, else leaves the image as it is."""

  def wrapped(image, rng):
    k_apply, k_aug = jax.random.split(rng)
    return jnp.where(jax.random.bernoulli(k_apply, prob), augment(image, k_aug), image)

  return wrapped


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
                     contrast: float = 0.4, erase_prob: float = 0.0,
                     erase_size: int = 10) -> Augment:
  """Stronger augmentation: resized crop, flip, jitter and, with `erase_prob`, erasing.

  For self-supervised pre-training, and as FixMatch's strong view with erasing
  (the paper's Cutout).
  """
  parts = [random_resized_crop(scale, flip_prob=0.5), brightness_contrast(brightness, contrast)]
  if erase_prob:
    parts.append(random_erase(erase_prob, erase_size))
  return compose(*parts)


def simclr(scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
           *, flip_prob: float = 0.5, strength: float = 0.5, jitter_prob: float = 0.8,
           grayscale_prob: float = 0.2, blur_sigma: tuple[float, float] = (0.1, 1.0),
           blur_prob: float = 0.5) -> Augment:
  """One SimCLR view (Chen et al., 2020), sized for small (28 to 64 pixel) images.

  Random resized crop with a fused left-right flip, colour jitter in random order
  (brightness, contrast and saturation `0.8 * strength`, hue `0.2 * strength`) with
  probability `jitter_prob`, grayscale with probability `grayscale_prob`, and a
  Gaussian blur. The paper's `strength` is 1 on ImageNet and 0.5 on CIFAR; its blur
  (sigma 0.1 to 2 on 224 pixels, left out on CIFAR) is kept here at up to 1 pixel.
  Two views of an image are two calls with different keys. Images in [0, 1]
  stay in [0, 1].

  Args:
    scale: area fraction range of the crop.
    ratio: aspect ratio range of the crop.
    flip_prob: chance of a left-right flip.
    strength: colour jitter strength `s`.
    jitter_prob: chance of colour jitter.
    grayscale_prob: chance of grayscale.
    blur_sigma: blur standard deviation range in pixels.
    blur_prob: chance of blur.
  """
  return compose(
      random_resized_crop(scale, ratio, flip_prob=flip_prob),
      color_jitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength,
                   prob=jitter_prob),
      random_grayscale(grayscale_prob),
      gaussian_blur(blur_sigma, prob=blur_prob))
