"""Masked image modelling: predict the pixels of hidden patches (MAE, He et al., 2022)."""

import jax
import jax.numpy as jnp

from jaxpretrain.errors import ConfigError
from jaxpretrain.objectives.common import Objective, call_model, weighted_mean

# Where the objective puts the visible patches' indices for the model (see
# `models.mae.MaskedAutoencoder`).
_VISIBLE_PATCHES = 'visible_patches'
# Evaluation masks the same patches every time, so that scores are comparable.
_EVAL_SEED = 0


def patchify(image_BxHxWxC: jax.Array, patch_size: int) -> jax.Array:
  """Cuts images into flattened square patches, (B, N, p * p * C).

  Patches are numbered row by row (as a ViT's patch embedding numbers them) and
  each is flattened in (row, column, channel) order.
  """
  b, h, w, c = image_BxHxWxC.shape
  p = patch_size
  if h % p or w % p:
    raise ConfigError(f'patch_size={p} must divide the image size {h}x{w}')
  x = image_BxHxWxC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches_BxNxP: jax.Array, patch_size: int, height: int | None = None,
               width: int | None = None) -> jax.Array:
  """The inverse of `patchify`: (B, N, p * p * C) back to (B, H, W, C) images.

  `height` and `width` default to a square image of N patches.
  """
  b, n, pp_c = patches_BxNxP.shape
  p = patch_size
  c = pp_c // (p * p)
  if height is None or width is None:
    side = round(n ** 0.5)
    height, width = height or side * p, width or side * p
  gh, gw = height // p, width // p
  if gh * gw != n or p * p * c != pp_c:
    raise ConfigError(f'{n} patches of {pp_c} values do not tile a {height}x{width} image '
                      f'with patch_size={p}')
  x = patches_BxNxP.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
  """How many of `num_patches` patches are masked: `round(num_patches * mask_ratio)`."""
  return int(round(num_patches * mask_ratio))


def random_patch_masks(rng: jax.Array, batch_size: int, num_patches: int, num_masked: int,
                       first_index: jax.Array | int = 0) -> tuple[jax.Array, jax.Array]:
  """Per-example random masks of exactly `num_masked` patches.

  Example i draws from `fold_in(rng, first_index + i)`, so its mask does not
  depend on the batch size (padding appended to a batch leaves the others'
  masks alone) nor, with `first_index` its place in the global batch, on how
  the batch is split between devices.

  Returns:
    `visible_BxK` int32, the K = N - `num_masked` visible patches of each
    example in increasing order, and `masked_BxN`, True at masked patches.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first_index + jnp.arange(batch_size))
  perm_BxN = jax.vmap(lambda k: jax.random.permutation(k, num_patches))(keys)
  visible_BxK = jnp.sort(perm_BxN[:, :num_patches - num_masked], axis=1).astype(jnp.int32)
  rows_BxK = jnp.broadcast_to(jnp.arange(batch_size)[:, None], visible_BxK.shape)
  masked_BxN = jnp.ones((batch_size, num_patches), bool).at[rows_BxK, visible_BxK].set(False)
  return visible_BxK, masked_BxN


def masked_image_modeling(*, patch_size: int, mask_ratio: float = 0.75,
                          norm_pix_loss: bool = True, axis_name: str | None = None,
                          image_key: str = 'image', eps: float = 1e-6) -> Objective:
  """Mean squared error of a masked autoencoder's pixel predictions on the masked patches.

  Each example hides a random `round(N * mask_ratio)` of its N patches (drawn
  from the step's rng; in evaluation from a fixed key, so scores are
  deterministic). The model gets the images under `image` and the visible
  patches' indices under `visible_patches` (see `models.mae.MaskedAutoencoder`) and
  returns `predicted_patches` (B, N, p * p * C), scored only where masked.

  Args:
    patch_size: the model's patch size p.
    mask_ratio: fraction of patches hidden from the encoder; at least one patch
      is masked and one stays visible.
    norm_pix_loss: targets are each patch's pixels standardised by that patch's
      own mean and variance (MAE's better-representations variant), else raw.
    axis_name: the pmap axis, or None: each device then numbers its examples by
      their place in the global batch, so evaluation masks the same patches as
      on one device.
    image_key: batch key of the images.
    eps: added to the patch variance before standardising.

  Returns:
    An objective whose metrics are `loss` (per-value MSE on masked patches).
  """
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigError(f'mask_ratio must be in (0, 1), got {mask_ratio}')

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    mask_rng, model_rng = jax.random.split(rng)
    if not train:
      mask_rng = jax.random.PRNGKey(_EVAL_SEED)
    image = batch[image_key]
    target_BxNxP = patchify(image.astype(jnp.float32), patch_size)
    b, n, _ = target_BxNxP.shape
    num_masked = num_masked_patches(n, mask_ratio)
    if not 0 < num_masked < n:
      raise ConfigError(f'mask_ratio={mask_ratio} masks {num_masked} of {n} patches; at least '
                        f'one must be masked and one visible')
    first_index = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
    visible_BxK, masked_BxN = random_patch_masks(mask_rng, b, n, num_masked, first_index)
    outputs, metrics = call_model(apply_fn, params,
                                  {**batch, 'image': image, _VISIBLE_PATCHES: visible_BxK},
                                  model_rng, model_state=model_state, train=train)
    pred_BxNxP = outputs['predicted_patches'].astype(jnp.float32)
    if pred_BxNxP.shape != target_BxNxP.shape:
      raise ConfigError(f'the model predicts patches of shape {pred_BxNxP.shape[1:]}, but '
                        f'patch_size={patch_size} cuts the images into {target_BxNxP.shape[1:]}; '
                        f"give the objective the model's patch size")
    if norm_pix_loss:
      mean_BxNx1 = target_BxNxP.mean(axis=-1, keepdims=True)
      var_BxNx1 = target_BxNxP.var(axis=-1, keepdims=True)
      target_BxNxP = (target_BxNxP - mean_BxNx1) / jnp.sqrt(var_BxNx1 + eps)
    err_BxN = jnp.mean((pred_BxNxP - target_BxNxP) ** 2, axis=-1)
    per_example_B = jnp.sum(err_BxN * masked_BxN, axis=1) / num_masked
    loss = weighted_mean(per_example_B, batch)
    return loss, {**metrics, 'loss': loss}

  return objective
