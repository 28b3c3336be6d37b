"""Masked autoencoder (He et al., 2022): a ViT on the visible patches, a light decoder.

The encoder embeds only the patches a batch names visible; the decoder
projects their states to its own width, puts a learned mask token at every
other patch (in the image's patch order), adds fixed 2-D sin-cos positions and
predicts each patch's pixels. Parameters:

  encoder/...                      the `ViT`, exactly as under `Classifier(ViT(...))`
  decoder/embed                    encoder width -> decoder width
  decoder/mask_token               (1, 1, decoder width)
  decoder/layer_{i}/..., decoder/final_norm
  decoder/pred                     decoder width -> p * p * C pixels

so that fine-tuning grafts `encoder/...` onto a classifier and drops the decoder.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain.errors import ConfigError
from jaxpretrain.models.layers import layer_set
from jaxpretrain.models.transformer import TransformerBlock, TransformerConfig
from jaxpretrain.models.vit import ViT

# The batch key of the (B, K) int32 indices of the patches the encoder sees.
VISIBLE_PATCHES = 'visible_patches'


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  angles = positions.reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d_positions(dim: int, grid_size: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings of a square grid of patches, (grid**2, dim).

  Half the channels encode a patch's column and half its row, each as sines
  and cosines of geometrically spaced frequencies; the layout of MAE's
  `get_2d_sincos_pos_embed` (column first), so its decoders' positions agree.

  Raises:
    ConfigError: `dim` is not a multiple of 4.
  """
  if dim % 4:
    raise ConfigError(f'sin-cos positions need a width divisible by 4, got {dim}')
  rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64),
                           np.arange(grid_size, dtype=np.float64), indexing='ij')
  return np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)],
                        axis=1).astype(np.float32)


class MAEDecoder(nn.Module):
  """Encoded visible tokens plus mask tokens to per-patch pixel predictions.

  Attributes:
    hidden: decoder width.
    depth: number of Transformer blocks.
    heads: attention heads.
    mlp_size: width of each block's MLP; None for 4 * `hidden`.
    grid_size: patches along each side of the image (N = grid_size**2).
    patch_pixels: p * p * C values predicted per patch.
    class_token: the encoder's tokens start with a class token, which the
      decoder carries along (at position zero) and drops before predicting.
    layer_norm_eps: epsilon of every LayerNorm.
    initializer_range: standard deviation of the normal initialisers.
    dtype: computation dtype (parameters stay float32); the predicted pixels
      come out float32.
    layers: 'fast' or 'flax' dense and dropout layers (see `TransformerConfig.layers`).
  """
  hidden: int
  depth: int
  heads: int
  grid_size: int
  patch_pixels: int
  mlp_size: int | None = None
  class_token: bool = True
  layer_norm_eps: float = 1e-6
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  layers: str = 'fast'

  @nn.compact
  def __call__(self, tokens_BxTxE: jax.Array, visible_BxK: jax.Array | None, *,
               train: bool) -> jax.Array:
    """Predicts the pixels of all N patches, (B, N, p * p * C).

    Args:
      tokens_BxTxE: the encoder's tokens: its class token (if any), then the
        visible patches in the order of `visible_BxK`.
      visible_BxK: which patch each encoded token is; None when all N were
        encoded in order.
      train: enables dropout in the blocks (none by default).
    """
    n = self.grid_size ** 2
    d = self.hidden
    cfg = TransformerConfig(
        vocab_size=1, hidden_size=d, num_layers=self.depth, num_heads=self.heads,
        intermediate_size=self.mlp_size or 4 * d, max_position_embeddings=n + 1,
        type_vocab_size=0, dropout=0.0, attention_dropout=0.0,
        layer_norm_eps=self.layer_norm_eps, pre_norm=True, activation='gelu', pooler=False,
        initializer_range=self.initializer_range, dtype=self.dtype, layers=self.layers)
    dense = layer_set(self.layers).dense
    x_BxTxD = dense(d, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                    name='embed')(tokens_BxTxE)
    n_cls = int(self.class_token)
    b = x_BxTxD.shape[0]
    cls_Bx1xD, x_BxKxD = x_BxTxD[:, :n_cls], x_BxTxD[:, n_cls:]
    mask_1x1xD = self.param('mask_token', nn.initializers.normal(self.initializer_range),
                            (1, 1, d))
    if visible_BxK is None:
      x_BxNxD = x_BxKxD
    else:
      # Every patch starts as the mask token; the encoded ones go back to their places.
      full_BxNxD = jnp.broadcast_to(mask_1x1xD.astype(x_BxKxD.dtype), (b, n, d))
      x_BxNxD = jax.vmap(lambda full, idx, x: full.at[idx].set(x))(
          full_BxNxD, visible_BxK.astype(jnp.int32), x_BxKxD)
    pos_TxD = np.concatenate([np.zeros((n_cls, d), np.float32),
                              sincos_2d_positions(d, self.grid_size)])
    x_BxTxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1) + jnp.asarray(pos_TxD, self.dtype)
    t = x_BxTxD.shape[1]
    mask_Bx1xTxT = jnp.ones((b, 1, t, t), bool)
    for i in range(self.depth):
      x_BxTxD = TransformerBlock(cfg, name=f'layer_{i}')(x_BxTxD, mask_Bx1xTxT, train=train)
    x_BxTxD = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name='final_norm')(x_BxTxD)
    pixels_BxNxP = dense(self.patch_pixels, dtype=self.dtype,
                         kernel_init=nn.initializers.xavier_uniform(),
                         name='pred')(x_BxTxD[:, n_cls:])
    return pixels_BxNxP.astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
  """A ViT encoder on the visible patches and an `MAEDecoder` that predicts every patch.

  Batch keys: `image` (B, H, W, C) and, optionally, `visible_patches` (B, K)
  int32, the indices (row by row, in `[0, N)`, no repeats) of the patches the
  encoder sees; without it the encoder sees every patch (initialisation,
  inspection). `objectives.masked_image.masked_image_modeling` draws them, and
  reads `predicted_patches`.

  Attributes:
    encoder: the `ViT`; its parameters live under `encoder/`.
    decoder_hidden: decoder width (MAE: 512).
    decoder_depth: decoder blocks (MAE: 8).
    decoder_heads: decoder attention heads (MAE: 16).
    decoder_mlp_size: decoder MLP width; None for 4 * `decoder_hidden`.
    decoder_layer_norm_eps: epsilon of the decoder's LayerNorms.

  Returns:
    `features` (B, D) of the encoder (pooled over the visible patches),
    `predicted_patches` (B, N, p * p * C): every patch's pixels in `patchify`
    order, of which the objective scores the masked ones.
  """
  encoder: ViT
  decoder_hidden: int = 512
  decoder_depth: int = 8
  decoder_heads: int = 16
  decoder_mlp_size: int | None = None
  decoder_layer_norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    enc = self.encoder
    visible_BxK = batch.get(VISIBLE_PATCHES)
    out = enc(batch['image'], visible_BxK=visible_BxK, train=train)
    decoder = MAEDecoder(hidden=self.decoder_hidden, depth=self.decoder_depth,
                         heads=self.decoder_heads, grid_size=enc.grid_size,
                         patch_pixels=enc.patch_size ** 2 * enc.channels,
                         mlp_size=self.decoder_mlp_size, class_token=enc.class_token,
                         layer_norm_eps=self.decoder_layer_norm_eps,
                         initializer_range=enc.initializer_range, dtype=enc.dtype,
                         layers=enc.layers, name='decoder')
    return {'features': out['features'],
            'predicted_patches': decoder(out['tokens'], visible_BxK, train=train)}
