"""Small convolutional encoder and decoder for low-resolution images.

Each computes in its `dtype`, with float32 parameters and normalisation
statistics (Flax reduces in float32 whatever the dtype); the decoders return
float32 images.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _norm(kind: str | None, train: bool, name: str, channels: int,
          axis_name: str | None = None, dtype: Any = jnp.float32) -> Any:
  """Normalisation layer by name; `None` for no normalisation."""
  if kind is None or kind == 'none':
    return lambda x: x
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=axis_name,
                        dtype=dtype, name=name)
  if kind == 'layer':
    return nn.LayerNorm(dtype=dtype, name=name)
  if kind == 'group':
    # Eight groups where the width allows, fewer for very narrow layers.
    return nn.GroupNorm(num_groups=math.gcd(8, channels), dtype=dtype, name=name)
  raise ValueError(f"unknown norm {kind!r}; use 'batch', 'layer', 'group' or None")


def space_to_depth(x_BxHxWxC: jax.Array, block: int = 2) -> jax.Array:
  """Folds each `block`x`block` patch into channels: (B, H, W, C) -> (B, H/b, W/b, b*b*C)."""
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def depth_to_space(x_BxhxwxD: jax.Array, block: int | tuple[int, int]) -> jax.Array:
  """The inverse of `space_to_depth`: (B, h, w, p*q*C) -> (B, h*p, w*q, C).

  `block` is the (p, q) block of pixels each location holds, or p for (p, p).
  """
  p, q = image_size(block)
  b, h, w, d = x_BxhxwxD.shape
  c = d // (p * q)
  x = x_BxhxwxD.reshape(b, h, w, p, q, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * q, c)


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
  """`(height, width)` from a size given as both or as one side of a square."""
  if isinstance(size, int):
    return size, size
  height, width = size
  return int(height), int(width)


class ConvEncoder(nn.Module):
  """Stages of 3x3 convolutions with 2x2 pooling between stages.

  Attributes:
    stages: output channels of each convolution, grouped by stage; the
      resolution halves between stages.
    norm: 'batch', 'layer', 'group' or None.
    stem: 'space_to_depth' folds 2x2 pixel blocks into channels first (halving
      the resolution cheaply), or 'none'.
    downsample: 'max' or 'avg' pooling between stages.
    pool: 'mean' (global average) or 'flatten' for the feature vector.
    features: if > 0, a dense layer with ReLU to this many features at the end.
    input_mean, input_std: inputs are standardised as `(x - mean) / std` first.
    bn_axis_name: the mapped axis BatchNorm averages its batch statistics over
      (under `pmap`); None for the batch on hand.
    dtype: computation dtype (parameters stay float32).
  """
  stages: Sequence[Sequence[int]] = ((32, 32), (64, 64), (128, 128))
  norm: str | None = 'batch'
  stem: str = 'none'
  downsample: str = 'max'
  pool: str = 'mean'
  features: int = 0
  input_mean: float = 0.0
  input_std: float = 1.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    x = (image_BxHxWxC - self.input_mean) / self.input_std
    if self.stem == 'space_to_depth':
      x = space_to_depth(x)
    elif self.stem != 'none':
      raise ValueError(f"unknown stem {self.stem!r}; use 'space_to_depth' or 'none'")
    pool = {'max': nn.max_pool, 'avg': nn.avg_pool}[self.downsample]
    for s, widths in enumerate(self.stages):
      if s:
        x = pool(x, (2, 2), strides=(2, 2), padding='SAME')
      for c, width in enumerate(widths):
        x = nn.Conv(width, (3, 3), use_bias=self.norm in (None, 'none'), dtype=self.dtype,
                    name=f'stage{s}_conv{c}')(x)
        x = nn.relu(_norm(self.norm, train, f'stage{s}_norm{c}', width,
                             self.bn_axis_name, self.dtype)(x))
    feature_map = x
    if self.pool == 'flatten':
      x = x.reshape(x.shape[0], -1)
    elif self.pool == 'mean':
      x = jnp.mean(x, axis=(1, 2))
    else:
      raise ValueError(f"unknown pool {self.pool!r}; use 'mean' or 'flatten'")
    if self.features:
      x = nn.relu(nn.Dense(self.features, dtype=self.dtype, name='fc')(x))
    return {'features': x, 'feature_map': feature_map}


class ConvDecoder(nn.Module):
  """Feature map back to an image, by stride-2 transposed convolutions.

  Attributes:
    widths: channels of each upsampling stage, from the deepest.
    out_channels: channels of the reconstructed image.
    out_size: `(height, width)` of the reconstructed image, or the side of a square one.
    dtype: computation dtype (parameters stay float32); the image comes out float32.
  """
  widths: Sequence[int] = (64, 32)
  out_channels: int = 1
  out_size: int | tuple[int, int] = 28
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feature_map_BxhxwxC: jax.Array, *, train: bool = False) -> jax.Array:
    x = feature_map_BxhxwxC
    for s, width in enumerate(self.widths):
      x = nn.relu(nn.ConvTranspose(width, (3, 3), strides=(2, 2), dtype=self.dtype,
                                   name=f'up{s}')(x))
    x = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name='out')(x).astype(jnp.float32)
    return jax.image.resize(x, (x.shape[0], *image_size(self.out_size), self.out_channels),
                            'bilinear')


class PixelShuffleDecoder(nn.Module):
  """Feature map back to an image: an MLP at each location predicts its block of pixels.

  A map of h x w locations becomes blocks of `H / h` by `W / w` pixels, rounded
  up (then resized if they do not tile the H x W image exactly), as MAE's
  decoder head does for its patches. Only matrix products: on a CPU its
  gradient costs a small fraction of `ConvDecoder`'s transposed convolutions
  (0.1 s against 15 s from a 7x7x128 map to 28x28, batch 256, one core).

  Attributes:
    hidden: width of the MLP's hidden layer (0: a single linear layer).
    out_channels: channels of the reconstructed image.
    out_size: `(height, width)` of the reconstructed image, or the side of a square one.
    dtype: computation dtype (parameters stay float32); the image comes out float32.
  """
  hidden: int = 256
  out_channels: int = 1
  out_size: int | tuple[int, int] = 28
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feature_map_BxhxwxD: jax.Array, *, train: bool = False) -> jax.Array:
    b, h, w, _ = feature_map_BxhxwxD.shape
    height, width = image_size(self.out_size)
    # Ceilings: the blocks cover the image, then it is resized.
    block = max(1, -(-height // h)), max(1, -(-width // w))
    x = feature_map_BxhxwxD
    if self.hidden:
      x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(x))
    x = nn.Dense(block[0] * block[1] * self.out_channels, dtype=self.dtype, name='pixels')(x)
    x = depth_to_space(x.astype(jnp.float32), block)
    if x.shape[1:3] != (height, width):
      x = jax.image.resize(x, (b, height, width, self.out_channels), 'bilinear')
    return x
