"""Mixup and cutmix: training images blended with partners from the same batch.

A mix is `(images_BxHxWxC, targets_BxK, rng, *, mask_B=None) -> (images, targets)`
on per-class target probabilities. Each example is paired with `partners(rng, B,
mask_B)[i]`, one permutation of the batch, and one mixing weight `lam` is drawn per
batch from Beta(alpha, alpha), as in both papers. The targets are mixed with the
weight each image actually got, so they stay probabilities. Under `jax.jit` over a
mesh the partners come from the whole global batch; under `pmap`, from each device's.

Padding (mask 0) never leaks into real examples: the permutation pairs real
examples only with real examples, and each padded example with itself, so every
mask stays valid as it is.

`with_mixing` wraps a classification objective: in training it mixes the batch and
hands the mixed targets over under `soft_label`; in evaluation the batch is unchanged.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpretrain.objectives.common import Objective, example_weights

Mix = Callable[..., tuple[jax.Array, jax.Array]]


def partners(rng: jax.Array, n: int, mask_B: jax.Array | None = None) -> jax.Array:
  """A random permutation of a batch of `n` that maps real examples to real examples.

  Args:
    rng: key.
    n: batch size.
    mask_B: 0 for padding; None when every example is real.

  Returns:
    int32 indices `perm_B`: example i is mixed with example `perm_B[i]`. Padded
    examples map to themselves.
  """
  if mask_B is None:
    return jax.random.permutation(rng, n).astype(jnp.int32)
  real_B = mask_B > 0
  index_B = jnp.arange(n)
  # Stable sorts: `slots` lists the real positions in order, then the padded ones;
  # `shuffled` lists the real positions in random order, then the padded ones in order.
  slots = jnp.argsort(jnp.where(real_B, index_B, n + index_B))
  shuffled = jnp.argsort(jnp.where(real_B, jax.random.uniform(rng, (n,)),
                                   1.0 + index_B.astype(jnp.float32)))
  return jnp.zeros((n,), jnp.int32).at[slots].set(shuffled.astype(jnp.int32))


def _check_alpha(alpha: float) -> None:
  if alpha < 0:
    raise ValueError(f'alpha must be >= 0 (0 turns mixing off), got {alpha}')


def mixup(alpha: float = 0.2) -> Mix:
  """Mixup (Zhang et al., 2018): `lam * x_i + (1 - lam) * x_perm(i)`, same for targets.

  Args:
    alpha: Beta(alpha, alpha) concentration of `lam`; 0 leaves batches unchanged.

  Returns:
    A mix `(images_BxHxWxC, targets_BxK, rng, *, mask_B=None) -> (images, targets)`.
  """
  _check_alpha(alpha)

  def mix(images_BxHxWxC, targets_BxK, rng, *, mask_B=None):
    if not alpha:
      return images_BxHxWxC, targets_BxK
    k_lam, k_perm = jax.random.split(rng)
    lam = jax.random.beta(k_lam, alpha, alpha)
    perm_B = partners(k_perm, images_BxHxWxC.shape[0], mask_B)
    images = lam * images_BxHxWxC + (1 - lam) * images_BxHxWxC[perm_B]
    targets = lam * targets_BxK + (1 - lam) * targets_BxK[perm_B]
    return images.astype(images_BxHxWxC.dtype), targets

  return mix


def cutmix(alpha: float = 1.0) -> Mix:
  """CutMix (Yun et al., 2019): a box of each partner's image pasted into each image.

  The box has area fraction about `1 - lam` (`lam` from Beta(alpha, alpha)), a
  uniformly drawn centre, and is clipped to the image; the targets give the
  partner exactly the pasted area fraction. One box per batch.

  Args:
    alpha: Beta(alpha, alpha) concentration of `lam`; 0 leaves batches unchanged.

  Returns:
    A mix `(images_BxHxWxC, targets_BxK, rng, *, mask_B=None) -> (images, targets)`.
  """
  _check_alpha(alpha)

  def mix(images_BxHxWxC, targets_BxK, rng, *, mask_B=None):
    if not alpha:
      return images_BxHxWxC, targets_BxK
    _, h, w, _ = images_BxHxWxC.shape
    k_lam, k_y, k_x, k_perm = jax.random.split(rng, 4)
    side = jnp.sqrt(1 - jax.random.beta(k_lam, alpha, alpha))
    half_h = jnp.floor(side * h / 2).astype(jnp.int32)
    half_w = jnp.floor(side * w / 2).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), 0, h)
    cx = jax.random.randint(k_x, (), 0, w)
    yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box_HxW = ((yy >= cy - half_h) & (yy < cy + half_h)
               & (xx >= cx - half_w) & (xx < cx + half_w))
    # The box is clipped at the borders, so its true area, not 1 - lam, weighs the targets.
    pasted = jnp.mean(box_HxW.astype(jnp.float32))
    perm_B = partners(k_perm, images_BxHxWxC.shape[0], mask_B)
    images = jnp.where(box_HxW[None, :, :, None], images_BxHxWxC[perm_B], images_BxHxWxC)
    targets = (1 - pasted) * targets_BxK + pasted * targets_BxK[perm_B]
    return images, targets

  return mix


def either(first: Mix, second: Mix, prob: float = 0.5) -> Mix:
  """Per batch, `first` with probability `prob`, else `second` (e.g. mixup or cutmix)."""

  def mix(images_BxHxWxC, targets_BxK, rng, *, mask_B=None):
    k_pick, k_mix = jax.random.split(rng)
    return jax.lax.cond(jax.random.bernoulli(k_pick, prob),
                        lambda: first(images_BxHxWxC, targets_BxK, k_mix, mask_B=mask_B),
                        lambda: second(images_BxHxWxC, targets_BxK, k_mix, mask_B=mask_B))

  return mix


def with_mixing(objective: Objective, mix: Mix, num_classes: int, *, image_key: str = 'image',
                label_key: str = 'label', soft_label_key: str = 'soft_label') -> Objective:
  """Wraps a classification objective so that, in training, the batch is mixed first.

  The targets are the batch's `soft_label_key` if it has one, else one-hots of
  `label_key`; the mixed ones go to the objective under `soft_label_key`, which
  `objectives.classification` reads. Padding stays unmixed (see `partners`).
  Evaluation sees the batch unchanged. To augment each image before mixing, wrap
  the result in `with_augmentation`.

  Args:
    objective: reads soft targets under `soft_label_key` (e.g. `classification()`).
    mix: e.g. `mixup(0.2)`, `cutmix(1.0)` or `either(mixup(0.8), cutmix(1.0))`.
    num_classes: width of the one-hot targets.
    image_key: batch key of the NHWC images.
    label_key: batch key of the integer labels.
    soft_label_key: batch key of the per-class target probabilities.
  """

  def wrapped(apply_fn, params, batch, rng, *, model_state=None, train=True):
    if train:
      mix_rng, rng = jax.random.split(rng)
      targets_BxK = (batch[soft_label_key] if soft_label_key in batch
                     else jax.nn.one_hot(batch[label_key], num_classes))
      images, targets_BxK = mix(batch[image_key], targets_BxK, mix_rng,
                                mask_B=example_weights(batch))
      batch = {**batch, image_key: images, soft_label_key: targets_BxK}
    return objective(apply_fn, params, batch, rng, model_state=model_state, train=train)

  return wrapped
