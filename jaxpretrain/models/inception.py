"""Inception v1 (GoogLeNet) encoders, with a small-input stem and scalable widths.

An inception block runs four branches side by side and concatenates them on
channels: a 1x1 convolution; a 1x1 reduction then a 3x3; a 1x1 reduction then a
5x5 (or two 3x3s); a 3x3/1 max-pool then a 1x1 projection. Every convolution is
followed by BatchNorm and ReLU, as in torchvision's `googlenet`. Blocks are
grouped in stages with a 3x3/2 max-pool between stages.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), the columns of GoogLeNet's table 1.
BlockWidths = tuple[int, int, int, int, int, int]

# GoogLeNet's inception 3a-3b, 4a-4e and 5a-5b.
GOOGLENET_STAGES: tuple[tuple[BlockWidths, ...], ...] = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)
GOOGLENET_STEM = (64, 64, 192)

# The 5x5 branch's convolutions: the paper's 5x5, two stacked 3x3s (the same
# receptive field for fewer weights), or the single 3x3 of torchvision's googlenet.
_LARGE_BRANCH_KERNELS = {'5x5': (5,), '3x3x2': (3, 3), '3x3': (3,)}


class ConvNormReLU(nn.Module):
  """A bias-free convolution padded by `kernel // 2`, BatchNorm (epsilon 1e-3) and ReLU."""
  features: int
  kernel: int
  stride: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    pad = self.kernel // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)), use_bias=False, dtype=self.dtype,
                name='conv')(x_BxHxWxC)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                     axis_name=self.bn_axis_name, dtype=self.dtype, name='norm')(x)
    return nn.relu(x)


class InceptionBlock(nn.Module):
  """Four branches concatenated: `sum(widths[i] for i in (0, 2, 4, 5))` channels out.

  Attributes:
    widths: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) channels.
    large_branch: '5x5', '3x3x2' or '3x3' for the 5x5 branch's convolutions.
    bn_axis_name, dtype: see `InceptionV1`.
  """
  widths: BlockWidths
  large_branch: str = '5x5'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    c1, r3, c3, r5, c5, proj = self.widths

    def conv(features, kernel, name):
      return ConvNormReLU(features, kernel, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                          name=name)

    branch1 = conv(c1, 1, 'conv1x1')(x_BxHxWxC, train=train)
    branch3 = conv(r3, 1, 'reduce3x3')(x_BxHxWxC, train=train)
    branch3 = conv(c3, 3, 'conv3x3')(branch3, train=train)
    branch5 = conv(r5, 1, 'reduce5x5')(x_BxHxWxC, train=train)
    kernels = _LARGE_BRANCH_KERNELS[self.large_branch]
    for i, kernel in enumerate(kernels):
      name = 'conv5x5' if len(kernels) == 1 else f'conv5x5_{i}'
      branch5 = conv(c5, kernel, name)(branch5, train=train)
    pooled = nn.max_pool(x_BxHxWxC, (3, 3), strides=(1, 1), padding='SAME')
    branch_pool = conv(proj, 1, 'pool_proj')(pooled, train=train)
    return jnp.concatenate([branch1, branch3, branch5, branch_pool], axis=-1)


class InceptionV1(nn.Module):
  """An Inception v1 encoder: stem, then stages of inception blocks.

  Returns `{'features': B x D, 'feature_map': B x h x w x D}`, the features being
  the global mean of the last feature map.

  Attributes:
    stages: the blocks' `BlockWidths`, grouped by stage; a 3x3/2 max-pool runs
      between stages.
    stem: 'imagenet' (7x7/2 conv, 3x3/2 max-pool, 1x1 conv, 3x3 conv, 3x3/2
      max-pool: /8 resolution) or 'small' (one 3x3/1 conv to `stem_widths[-1]`
      channels and no pool; for 28x28 and 32x32 images).
    stem_widths: channels of the 'imagenet' stem's three convolutions.
    large_branch: '5x5' (the paper), '3x3x2' or '3x3' (torchvision).
    width_multiplier: scales every width (at least 1 channel each).
    input_mean, input_std: inputs are standardised as `(x - mean) / std` first;
      scalars or per-channel tuples.
    bn_axis_name: the mapped axis every BatchNorm averages its batch statistics
      over under `jax.pmap` (e.g. 'batch'); None under jit or on one device.
    dtype: computation dtype (parameters and BatchNorm statistics stay float32).
  """
  stages: Sequence[Sequence[BlockWidths]] = GOOGLENET_STAGES
  stem: str = 'imagenet'
  stem_widths: Sequence[int] = GOOGLENET_STEM
  large_branch: str = '5x5'
  width_multiplier: float = 1.0
  input_mean: float | Sequence[float] = 0.0
  input_std: float | Sequence[float] = 1.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  def _width(self, width: int) -> int:
    return max(1, round(width * self.width_multiplier))

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if self.large_branch not in _LARGE_BRANCH_KERNELS:
      raise ValueError(f'unknown large_branch {self.large_branch!r}; use one of '
                       f'{sorted(_LARGE_BRANCH_KERNELS)}')
    x = (image_BxHxWxC - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
    stem_widths = [self._width(w) for w in self.stem_widths]

    def stem_conv(features, kernel, stride, i, x):
      return ConvNormReLU(features, kernel, stride, bn_axis_name=self.bn_axis_name,
                          dtype=self.dtype, name=f'stem_conv{i}')(x, train=train)

    # 'SAME' max-pooling pads with -inf, and at stride 2 it gives torchvision's
    # ceil-mode sizes (112 -> 56 -> 28 -> 14 -> 7 from a 224 image).
    def downsample(x):
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')

    if self.stem == 'imagenet':
      x = downsample(stem_conv(stem_widths[0], 7, 2, 0, x))
      x = stem_conv(stem_widths[1], 1, 1, 1, x)
      x = downsample(stem_conv(stem_widths[2], 3, 1, 2, x))
    elif self.stem == 'small':
      x = stem_conv(stem_widths[-1], 3, 1, 0, x)
    else:
      raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'small'")
    for s, blocks in enumerate(self.stages):
      if s:
        x = downsample(x)
      for b, widths in enumerate(blocks):
        x = InceptionBlock(tuple(self._width(w) for w in widths), self.large_branch,
                           bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                           name=f'stage{s}_block{b}')(x, train=train)
    return {'features': jnp.mean(x, axis=(1, 2)), 'feature_map': x}


# GoogLeNet's widths; `large_branch='3x3'` gives torchvision's googlenet (without
# its auxiliary classifiers).
INCEPTION_PRESETS: dict[str, dict[str, Any]] = {
    'inception_v1': dict(stages=GOOGLENET_STAGES, stem_widths=GOOGLENET_STEM),
}


def inception(preset: str, **overrides: Any) -> InceptionV1:
  """An `InceptionV1` of an `INCEPTION_PRESETS` shape, with any field replaced.

  Example: `inception('inception_v1', stem='small', width_multiplier=0.25)`.
  """
  if preset not in INCEPTION_PRESETS:
    raise ValueError(f'unknown Inception preset {preset!r}; choose one of '
                     f'{sorted(INCEPTION_PRESETS)}')
  return InceptionV1(**{**INCEPTION_PRESETS[preset], **overrides})
