"""ResNet encoders (basic and bottleneck blocks) laid out like the public checkpoints.

The layout follows Hugging Face `transformers`' ResNetModel (microsoft/resnet-*),
which is torchvision's ResNet v1.5: symmetric `k // 2` padding on every
convolution, convolutions without bias, BatchNorm with epsilon 1e-5 and torch
momentum 0.1, a projection shortcut only where the shape changes, and the stride
of a bottleneck on its 3x3 convolution. Importing those weights is a rename:

  embedder.embedder.{convolution,normalization}   -> stem/{conv,norm}
  encoder.stages.{s}.layers.{b}.layer.{i}.*       -> stage{s}_block{b}/{conv,norm}{i}
  encoder.stages.{s}.layers.{b}.shortcut.*        -> stage{s}_block{b}/shortcut_{conv,norm}

(conv weights OIHW -> HWIO; BatchNorm weight/bias -> scale/bias in `params`,
running_mean/running_var -> mean/var in `batch_stats`). Of a `ResNetConfig`,
`embedding_size` is `stem_width`, `depths` are `stage_sizes`, and `hidden_sizes`
are `widths` for basic blocks or `BOTTLENECK_EXPANSION * widths` for bottlenecks.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models.memory import rematerialised

# Output channels of a bottleneck block per unit of its width.
BOTTLENECK_EXPANSION = 4
# The ImageNet statistics public checkpoints expect as `input_mean` and `input_std`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# He initialisation over the fan-out, as torchvision and transformers initialise ResNets.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, kernel: int, stride: int, name: str,
          dtype: Any = jnp.float32) -> nn.Conv:
  """A bias-free convolution padded by `kernel // 2` on every side.

  At stride 2 on an even size, flax's 'SAME' pads one less before than after
  (e.g. (0, 1) for a 3x3), which shifts the sampling grid off the one public
  weights were trained with.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_conv_init,
                 dtype=dtype, name=name)


def _batch_norm(train: bool, axis_name: str | None, name: str,
                dtype: Any = jnp.float32) -> nn.BatchNorm:
  # Flax's momentum is the weight of the old average: torch's 0.1 is flax's 0.9.
  # Its statistics are float32 whatever `dtype` (`force_float32_reductions`).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, dtype=dtype, name=name)


class _Stem(nn.Module):
  """'imagenet': 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; 'small': 3x3/1 conv, BN, ReLU."""
  kind: str
  width: int
  bn_axis_name: str | None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
    if self.kind == 'imagenet':
      x = _conv(self.width, 7, 2, 'conv', self.dtype)(x_BxHxWxC)
      x = nn.relu(_batch_norm(train, self.bn_axis_name, 'norm', self.dtype)(x))
      # Max-pooling pads with -inf, so the padding never wins, as in torch.
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if self.kind == 'small':
      x = _conv(self.width, 3, 1, 'conv', self.dtype)(x_BxHxWxC)
      return nn.relu(_batch_norm(train, self.bn_axis_name, 'norm', self.dtype)(x))
    raise ValueError(f"unknown stem {self.kind!r}; use 'imagenet' or 'small'")


def _shortcut(x_BxHxWxC: jax.Array, features: int, stride: int, train: bool,
              axis_name: str | None, dtype: Any = jnp.float32) -> jax.Array:
  """Identity where the shape is kept, else a strided 1x1 conv and BN.

  Called inside a block's `__call__`, so its layers are named in the block's scope.
  """
  if x_BxHxWxC.shape[-1] == features and stride == 1:
    return x_BxHxWxC
  x = _conv(features, 1, stride, 'shortcut_conv', dtype)(x_BxHxWxC)
  return _batch_norm(train, axis_name, 'shortcut_norm', dtype)(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (the first strided) and a residual; `width` channels out."""
  width: int
  stride: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    y = _conv(self.width, 3, self.stride, 'conv0', self.dtype)(x_BxHxWxC)
    y = nn.relu(_batch_norm(train, self.bn_axis_name, 'norm0', self.dtype)(y))
    y = _conv(self.width, 3, 1, 'conv1', self.dtype)(y)
    y = _batch_norm(train, self.bn_axis_name, 'norm1', self.dtype)(y)
    residual = _shortcut(x_BxHxWxC, self.width, self.stride, train, self.bn_axis_name,
                         self.dtype)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand and a residual; `BOTTLENECK_EXPANSION * width` channels out.

  Attributes:
    downsample_in_bottleneck: put the stride on the first 1x1 convolution (the
      original ResNet) instead of the 3x3 one (v1.5, torchvision and most
      public checkpoints).
  """
  width: int
  stride: int = 1
  downsample_in_bottleneck: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    out = BOTTLENECK_EXPANSION * self.width
    first, middle = (self.stride, 1) if self.downsample_in_bottleneck else (1, self.stride)
    norm = lambda name: _batch_norm(train, self.bn_axis_name, name, self.dtype)
    y = _conv(self.width, 1, first, 'conv0', self.dtype)(x_BxHxWxC)
    y = nn.relu(norm('norm0')(y))
    y = _conv(self.width, 3, middle, 'conv1', self.dtype)(y)
    y = nn.relu(norm('norm1')(y))
    y = _conv(out, 1, 1, 'conv2', self.dtype)(y)
    y = norm('norm2')(y)
    residual = _shortcut(x_BxHxWxC, out, self.stride, train, self.bn_axis_name, self.dtype)
    return nn.relu(y + residual)


_BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


def _call_block(block: nn.Module, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
  return block(x_BxHxWxC, train=train)


class ResNet(nn.Module):
  """A ResNet encoder: stem, then stages of residual blocks.

  Returns `{'features': B x D, 'feature_map': B x h x w x D}`, the features being
  the global mean of the last feature map (transformers' `pooler_output`).

  Attributes:
    stage_sizes: blocks per stage; every stage after the first halves the resolution.
    block: 'basic' (two 3x3 convs; ResNet-18/34) or 'bottleneck' (ResNet-50 and up).
    widths: width of each stage's blocks: their output channels for 'basic', the
      inner channels for 'bottleneck' (which outputs `BOTTLENECK_EXPANSION` times as many).
    stem: 'imagenet' (7x7/2 conv, BN, ReLU, 3x3/2 max-pool: /4 resolution) or
      'small' (3x3/1 conv, BN, ReLU, no pool; for 28x28 and 32x32 images).
    stem_width: output channels of the stem (transformers' `embedding_size`).
    downsample_in_first_stage: the first stage strides by 2 as well.
    downsample_in_bottleneck: see `BottleneckBlock`.
    input_mean, input_std: inputs are standardised as `(x - mean) / std` first;
      scalars or per-channel tuples (e.g. `IMAGENET_MEAN`, `IMAGENET_STD` for
      imported public weights).
    bn_axis_name: the mapped axis every BatchNorm averages its batch statistics
      over, e.g. 'batch' under `jaxpretrain.parallel.pmap`. Not needed under jit
      over a mesh, where the batch is already global.
    dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    remat: 'none', 'block' or 'dots': what each residual block keeps for the
      backward pass (`models.memory`).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'imagenet'
  stem_width: int = 64
  downsample_in_first_stage: bool = False
  downsample_in_bottleneck: bool = False
  input_mean: float | Sequence[float] = 0.0
  input_std: float | Sequence[float] = 1.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  remat: str = 'none'

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if self.block not in _BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; use one of {sorted(_BLOCKS)}")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(f'{len(self.stage_sizes)} stage sizes but {len(self.widths)} widths')
    x = (image_BxHxWxC - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
    x = _Stem(self.stem, self.stem_width, self.bn_axis_name, self.dtype, name='stem')(
        x, train=train)
    extra: dict[str, Any] = ({'downsample_in_bottleneck': self.downsample_in_bottleneck}
                             if self.block == 'bottleneck' else {})
    call = rematerialised(_call_block, self.remat, static_argnums=(2,))
    for s, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(size):
        stride = 2 if b == 0 and (s > 0 or self.downsample_in_first_stage) else 1
        block = _BLOCKS[self.block](width, stride, bn_axis_name=self.bn_axis_name,
                                    dtype=self.dtype, name=f'stage{s}_block{b}', **extra)
        x = call(block, x, train)
    return {'features': jnp.mean(x, axis=(1, 2)), 'feature_map': x}


# The shapes of the public ImageNet models (torchvision resnet*, microsoft/resnet-*).
# Their weights expect `input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD`.
RESNET_PRESETS: dict[str, dict[str, Any]] = {
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), block='basic'),
    'resnet34': dict(stage_sizes=(3, 4, 6, 3), block='basic'),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), block='bottleneck'),
    'resnet101': dict(stage_sizes=(3, 4, 23, 3), block='bottleneck'),
    'resnet152': dict(stage_sizes=(3, 8, 36, 3), block='bottleneck'),
}


def resnet(preset: str, **overrides: Any) -> ResNet:
  """A `ResNet` of a `RESNET_PRESETS` shape, with any field replaced.

  Example: `resnet('resnet18', stem='small', dtype=jnp.bfloat16)`.
  """
  if preset not in RESNET_PRESETS:
    raise ValueError(f'unknown ResNet preset {preset!r}; choose one of {sorted(RESNET_PRESETS)}')
  return ResNet(**{**RESNET_PRESETS[preset], **overrides})
