"""VGG encoders (11 and 16 layers, with or without BatchNorm), usable on small images.

The convolutions follow torchvision's `vgg*` / `vgg*_bn` feature extractors
(3x3, padding 1, with bias, then BatchNorm where used, then ReLU; 2x2/2
max-pooling after each stage), named `stage{s}_conv{c}` / `stage{s}_norm{c}`.
The fully connected classifier of the public models is left out: features are
the global average of the last feature map, and a head goes on top (see
`jaxpretrain.models.Classifier`).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_VGG11 = ((64,), (128,), (256, 256), (512, 512), (512, 512))
_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# He initialisation over the fan-out, as torchvision initialises VGG; without
# BatchNorm a deep plain stack needs it to start with unit-scale activations.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class VGG(nn.Module):
  """Stages of 3x3 convolutions, each stage followed by a 2x2/2 max-pool.

  Returns `{'features': B x D, 'feature_map': B x h x w x D}`, the features being
  the global mean of the last feature map.

  Attributes:
    stages: output channels of each convolution, grouped by stage.
    batch_norm: BatchNorm after every convolution (the `_bn` variants).
    max_pools: pool after at most this many stages (the first ones); None for
      after every stage. Either way a map smaller than 2x2 is not pooled, so
      28x28 and 16x16 images run through all stages.
    input_mean, input_std: inputs are standardised as `(x - mean) / std` first;
      scalars or per-channel tuples.
    bn_axis_name: the mapped axis BatchNorm averages its batch statistics over
      under `jax.pmap` (e.g. 'batch'); None under jit or on one device.
    dtype: computation dtype (parameters and BatchNorm statistics stay float32).
  """
  stages: Sequence[Sequence[int]] = _VGG11
  batch_norm: bool = False
  max_pools: int | None = None
  input_mean: float | Sequence[float] = 0.0
  input_std: float | Sequence[float] = 1.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    x = (image_BxHxWxC - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
    pools = len(self.stages) if self.max_pools is None else self.max_pools
    for s, widths in enumerate(self.stages):
      for c, width in enumerate(widths):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_conv_init,
                    dtype=self.dtype, name=f'stage{s}_conv{c}')(x)
        if self.batch_norm:
          # torch's BatchNorm2d defaults: momentum 0.1 (flax 0.9), epsilon 1e-5.
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           axis_name=self.bn_axis_name, dtype=self.dtype,
                           name=f'stage{s}_norm{c}')(x)
        x = nn.relu(x)
      if s < pools and min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return {'features': jnp.mean(x, axis=(1, 2)), 'feature_map': x}


# The convolutional shapes of torchvision's vgg11, vgg11_bn, vgg16 and vgg16_bn.
VGG_PRESETS: dict[str, dict[str, Any]] = {
    'vgg11': dict(stages=_VGG11, batch_norm=False),
    'vgg11_bn': dict(stages=_VGG11, batch_norm=True),
    'vgg16': dict(stages=_VGG16, batch_norm=False),
    'vgg16_bn': dict(stages=_VGG16, batch_norm=True),
}


def vgg(preset: str, **overrides: Any) -> VGG:
  """A `VGG` of a `VGG_PRESETS` shape, with any field replaced.

  Example: `vgg('vgg16_bn', max_pools=3)`.
  """
  if preset not in VGG_PRESETS:
    raise ValueError(f'unknown VGG preset {preset!r}; choose one of {sorted(VGG_PRESETS)}')
  return VGG(**{**VGG_PRESETS[preset], **overrides})
