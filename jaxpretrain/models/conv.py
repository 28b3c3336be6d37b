"""Small convolutional encoder and decoder for low-resolution images."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _norm(kind: str | None, train: bool, name: str) -> Any:
  """Normalisation layer by name; `None` for no normalisation."""
  if kind is None or kind == 'none':
    return lambda x: x
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
  if kind == 'layer':
    return nn.LayerNorm(name=name)
  if kind == 'group':
    return nn.GroupNorm(num_groups=8, name=name)
  raise ValueError(f"unknown norm {kind!r}; use 'batch', 'layer', 'group' or None")


class ConvEncoder(nn.Module):
  """Stages of 3x3 convolutions, each stage halving the resolution.

  Attributes:
    widths: output channels of each stage.
    convs_per_stage: convolutions in each stage.
    norm: 'batch', 'layer', 'group' or None.
    features: size of the feature vector after global pooling and a dense layer;
      0 keeps the pooled channels.
  """
  widths: Sequence[int] = (32, 64, 128)
  convs_per_stage: int = 2
  norm: str | None = 'batch'
  features: int = 0

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    x = image_BxHxWxC
    for s, width in enumerate(self.widths):
      for c in range(self.convs_per_stage):
        x = nn.Conv(width, (3, 3), use_bias=self.norm is None, name=f'stage{s}_conv{c}')(x)
        x = _norm(self.norm, train, f'stage{s}_norm{c}')(x)
        x = nn.relu(x)
      if s < len(self.widths) - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    feature_map = x
    x = jnp.mean(x, axis=(1, 2))
    if self.features:
      x = nn.relu(nn.Dense(self.features, name='fc')(x))
    return {'features': x, 'feature_map': feature_map}


class ConvDecoder(nn.Module):
  """Mirror of `ConvEncoder`: feature map back to an image, by transposed convolutions.

  Attributes:
    widths: channels of each stage, from the deepest.
    out_channels: channels of the reconstructed image.
    out_size: height and width of the reconstructed image.
  """
  widths: Sequence[int] = (64, 32)
  out_channels: int = 1
  out_size: int = 28

  @nn.compact
  def __call__(self, feature_map_BxhxwxC: jax.Array, *, train: bool = False) -> jax.Array:
    x = feature_map_BxhxwxC
    for s, width in enumerate(self.widths):
      x = nn.ConvTranspose(width, (3, 3), strides=(2, 2), name=f'up{s}')(x)
      x = nn.relu(x)
    x = nn.Conv(self.out_channels, (3, 3), name='out')(x)
    return jax.image.resize(x, (x.shape[0], self.out_size, self.out_size, self.out_channels),
                            'bilinear')
