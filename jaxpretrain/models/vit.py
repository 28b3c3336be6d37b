"""Vision Transformer (ViT) encoder, built from the library's Transformer block.

An image is cut into non-overlapping patches, each embedded linearly (a
convolution with kernel = stride = patch size), a class token may lead, learned
position embeddings are added, and pre-LayerNorm blocks run over the sequence
before a final LayerNorm (Dosovitskiy et al., 2021). Parameter names follow
Hugging Face's `ViTModel` so that importing its weights is a rename:

  embeddings/patch_embeddings/{kernel,bias}   (p, p, C, D): HF's (D, C, p, p) conv weight
  embeddings/cls_token                        (1, 1, D)      (when `class_token`)
  embeddings/position_embeddings              (1, 1 + N, D)  (1 + N with a class token)
  layer_{i}/attention/{query,key,value,output}, layer_{i}/attention_norm   (layernorm_before)
  layer_{i}/mlp/{input,output}, layer_{i}/mlp_norm                         (layernorm_after)
  final_norm                                  HF's `layernorm`

Images are NHWC here and NCHW in PyTorch; patches are numbered row by row in
both, so the token sequences agree.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.errors import ConfigError
from jaxpretrain.models.layers import layer_set
from jaxpretrain.models.transformer import TransformerConfig, apply_blocks

_POOLINGS = ('cls', 'mean')

# Width / depth / heads of the public ViTs; the MLP is 4x the width, and 16x16
# patches of 224x224 images by default. Override any field:
# `vit('vit_tiny', image_size=28, patch_size=4)`.
VIT_PRESETS: dict[str, dict[str, int]] = {
    'vit_tiny': dict(hidden=192, depth=12, heads=3),
    'vit_small': dict(hidden=384, depth=12, heads=6),
    'vit_base': dict(hidden=768, depth=12, heads=12),
}


class ViTEmbeddings(nn.Module):
  """Patch embeddings plus learned positions, a leading class token, and dropout.

  Attributes:
    hidden: width D.
    patch_size: side p of the square patches.
    num_patches: N, the number of patches of a full image.
    class_token: prepend a learned class token (with its own position).
    dropout: on the embeddings.
    initializer_range: standard deviation of the truncated-normal initialisers.
    dtype: computation dtype (parameters stay float32).
    layers: which dropout layer, 'fast' or 'flax' (see `TransformerConfig.layers`).
  """
  hidden: int
  patch_size: int
  num_patches: int
  class_token: bool = True
  dropout: float = 0.0
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  layers: str = 'fast'

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, visible_BxK: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    p, d = self.patch_size, self.hidden
    init = nn.initializers.truncated_normal(self.initializer_range)
    x_BxhxwxD = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                        name='patch_embeddings')(image_BxHxWxC)
    b = x_BxhxwxD.shape[0]
    x_BxNxD = x_BxhxwxD.reshape(b, -1, d)
    n_cls = int(self.class_token)
    pos_1xTxD = self.param('position_embeddings', init, (1, n_cls + self.num_patches, d))
    # Positions go on before the gather, so each visible patch keeps its own.
    x_BxNxD = x_BxNxD + pos_1xTxD[:, n_cls:].astype(self.dtype)
    if visible_BxK is not None:
      x_BxNxD = jnp.take_along_axis(x_BxNxD, visible_BxK[..., None].astype(jnp.int32), axis=1)
    if self.class_token:
      cls_1x1xD = self.param('cls_token', init, (1, 1, d)) + pos_1xTxD[:, :1]
      cls_Bx1xD = jnp.broadcast_to(cls_1x1xD.astype(x_BxNxD.dtype), (b, 1, d))
      x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
    return layer_set(self.layers).dropout(self.dropout)(x_BxNxD, deterministic=not train)


class ViT(nn.Module):
  """Vision Transformer encoder: (B, H, W, C) images to `features` and `tokens`.

  Attributes:
    image_size: height and width of the (square) images; sizes the position table.
    patch_size: side p of the square patches; must divide `image_size`.
    channels: C of the images.
    hidden: width D of the tokens.
    depth: number of Transformer blocks.
    heads: attention heads; must divide `hidden`.
    mlp_size: width of each block's MLP; None for 4 * `hidden`.
    dropout: on the embeddings and on each residual branch.
    attention_dropout: on the attention probabilities.
    layer_norm_eps: epsilon of every LayerNorm (1e-12 as in Hugging Face's
      ViT; timm's and MAE's use 1e-6).
    class_token: prepend a learned class token.
    pooling: `features` are the class token's state ('cls') or the mean of the
      patch tokens' states ('mean'), both after the final norm.
    initializer_range: standard deviation of the normal initialisers.
    dtype: computation dtype (parameters stay float32); LayerNorm statistics
      and attention softmax are float32.
    layers: 'fast' or 'flax' dense and dropout layers (see `TransformerConfig.layers`).
    remat, scan_layers: memory levers of the blocks (see `TransformerConfig`);
      scanned, the blocks' parameters are stacked under `layers/`.
    input_mean, input_std: inputs are standardised as `(x - mean) / std` first;
      scalars or one value per channel.

  Example:
    >>> encoder = vit('vit_tiny', image_size=28, patch_size=4, channels=1)
    >>> model = Classifier(encoder, num_classes=10)
  """
  image_size: int = 224
  patch_size: int = 16
  channels: int = 3
  hidden: int = 768
  depth: int = 12
  heads: int = 12
  mlp_size: int | None = None
  dropout: float = 0.0
  attention_dropout: float = 0.0
  layer_norm_eps: float = 1e-12
  class_token: bool = True
  pooling: str = 'cls'
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  layers: str = 'fast'
  remat: str = 'none'
  scan_layers: bool = False
  input_mean: float | tuple[float, ...] = 0.0
  input_std: float | tuple[float, ...] = 1.0

  @property
  def grid_size(self) -> int:
    """Patches along each side of the image."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    """N, the number of patches of one image."""
    return self.grid_size ** 2

  def block_config(self) -> TransformerConfig:
    """The configuration of the blocks: pre-norm, exact GELU, bidirectional."""
    return TransformerConfig(
        vocab_size=1, hidden_size=self.hidden, num_layers=self.depth, num_heads=self.heads,
        intermediate_size=self.mlp_size or 4 * self.hidden,
        max_position_embeddings=self.num_patches + int(self.class_token), type_vocab_size=0,
        dropout=self.dropout, attention_dropout=self.attention_dropout,
        layer_norm_eps=self.layer_norm_eps, pre_norm=True, causal=False, activation='gelu',
        pooler=False, initializer_range=self.initializer_range, dtype=self.dtype,
        layers=self.layers, remat=self.remat, scan_layers=self.scan_layers)

  def _check(self, image_BxHxWxC: jax.Array) -> None:
    if self.pooling not in _POOLINGS:
      raise ConfigError(f'unknown pooling {self.pooling!r}; use one of {list(_POOLINGS)}')
    if self.pooling == 'cls' and not self.class_token:
      raise ConfigError("pooling='cls' needs class_token=True; use pooling='mean'")
    if self.image_size % self.patch_size:
      raise ConfigError(f'patch_size={self.patch_size} must divide '
                        f'image_size={self.image_size}')
    if image_BxHxWxC.ndim != 4 or image_BxHxWxC.shape[1:] != (
        self.image_size, self.image_size, self.channels):
      raise ConfigError(f'ViT expects (B, {self.image_size}, {self.image_size}, '
                        f'{self.channels}) NHWC images, got {image_BxHxWxC.shape}; set '
                        f'image_size and channels to the data')

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array, *, visible_BxK: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Encodes images, or only some of their patches.

    Args:
      image_BxHxWxC: images, NHWC.
      visible_BxK: if given, the indices (in `[0, N)`, row by row) of the K
        patches of each image to encode; the others are dropped after their
        embedding (masked autoencoders). The class token still leads.
      train: enables dropout (needs a 'dropout' rng).

    Returns:
      `tokens` (B, T, D) after the final norm, where T = N (or K) patches plus
      one leading class token when `class_token`; `features` (B, D) as `pooling`
      says; without `visible_BxK`, also `feature_map` (B, H/p, W/p, D), the patch
      tokens on their grid, for decoders that read a spatial map (autoencoders).
    """
    self._check(image_BxHxWxC)
    cfg = self.block_config()
    embeddings = ViTEmbeddings(
        hidden=self.hidden, patch_size=self.patch_size, num_patches=self.num_patches,
        class_token=self.class_token, dropout=self.dropout,
        initializer_range=self.initializer_range, dtype=self.dtype, layers=self.layers,
        name='embeddings')
    x_BxHxWxC = (image_BxHxWxC - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
    x_BxTxD = embeddings(x_BxHxWxC, visible_BxK, train=train)
    b, t, _ = x_BxTxD.shape
    mask_Bx1xTxT = jnp.ones((b, 1, t, t), bool)
    x_BxTxD = apply_blocks(cfg, x_BxTxD, mask_Bx1xTxT, train=train)
    tokens_BxTxD = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                                name='final_norm')(x_BxTxD)
    if self.pooling == 'cls':
      features_BxD = tokens_BxTxD[:, 0]
    else:
      features_BxD = tokens_BxTxD[:, int(self.class_token):].mean(axis=1)
    out = {'features': features_BxD, 'tokens': tokens_BxTxD}
    if visible_BxK is None:
      g = self.grid_size
      out['feature_map'] = tokens_BxTxD[:, int(self.class_token):].reshape(b, g, g, -1)
    return out


def vit(preset: str, **overrides: Any) -> ViT:
  """A ViT of `VIT_PRESETS[preset]`, any field overridden (e.g. `patch_size=4, image_size=28`).

  Raises:
    ConfigError: an unknown preset.
  """
  if preset not in VIT_PRESETS:
    raise ConfigError(f'unknown ViT preset {preset!r}; choose one of {sorted(VIT_PRESETS)}')
  return ViT(**{**VIT_PRESETS[preset], **overrides})
