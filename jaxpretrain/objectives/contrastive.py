"""Contrastive objectives: SimCLR's NT-Xent between two augmented views of every image."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxpretrain.objectives.common import (Objective, call_model, example_weights, mean_over,
                                           top1_hits)

# Excluded candidates get this logit rather than -inf, so that a row with no candidate
# left (an all-padding batch) stays finite and its zero weight cancels it.
_EXCLUDED = -1e9
# Evaluation draws its two views from this key so that scores are deterministic.
_EVAL_KEY = 0


def _unit(z_NxD: jax.Array) -> jax.Array:
  """Rows scaled to unit length, in float32."""
  z = z_NxD.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))


def _anchor_terms(z1_bxD: jax.Array, z2_bxD: jax.Array, weights_b: jax.Array, *,
                  temperature: float, axis_name: str | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Per-anchor NT-Xent losses and top-1 hits of this device's 2b anchors.

  The candidates are the 2B views of the global batch: gathered from every
  device under `axis_name`, else this batch's own views (B = b).

  Returns:
    `(losses_2b, hits_2b, anchor_weights_2b, total_weight)`, where
    `total_weight` sums the weights of all 2B anchors of the global batch.
  """
  b = z1_bxD.shape[0]
  z1_bxD, z2_bxD = _unit(z1_bxD), _unit(z2_bxD)
  weights_b = weights_b.astype(jnp.float32)
  if axis_name is None:
    g1_BxD, g2_BxD, gweights_B, offset = z1_bxD, z2_bxD, weights_b, 0
  else:
    g1_BxD, g2_BxD, gweights_B = jax.lax.all_gather((z1_bxD, z2_bxD, weights_b), axis_name,
                                                    tiled=True)
    offset = jax.lax.axis_index(axis_name) * b
  big_b = g1_BxD.shape[0]
  anchors_2bxD = jnp.concatenate([z1_bxD, z2_bxD])
  candidates_2BxD = jnp.concatenate([g1_BxD, g2_BxD])
  sim_2bx2B = anchors_2bxD @ candidates_2BxD.T / temperature

  # Anchor r is view 1 of global example offset + r (r < b), else view 2 of example
  # offset + r - b; its positive is the other view of the same example.
  local_2b = jnp.arange(2 * b)
  example_2b = offset + local_2b % b
  second_view_2b = local_2b >= b
  self_2b = jnp.where(second_view_2b, big_b + example_2b, example_2b)
  positive_2b = jnp.where(second_view_2b, example_2b, big_b + example_2b)

  column_2B = jnp.arange(2 * big_b)
  real_2B = jnp.concatenate([gweights_B, gweights_B]) > 0
  candidate_2bx2B = ((real_2B[None, :] & (column_2B[None, :] != self_2b[:, None]))
                     | (column_2B[None, :] == positive_2b[:, None]))
  logits_2bx2B = jnp.where(candidate_2bx2B, sim_2bx2B, _EXCLUDED)
  losses_2b = optax.softmax_cross_entropy_with_integer_labels(logits_2bx2B, positive_2b)
  hits_2b = top1_hits(logits=logits_2bx2B, labels=positive_2b)
  return losses_2b, hits_2b, jnp.concatenate([weights_b, weights_b]), 2 * jnp.sum(gweights_B)


def _global_mean(values_2b: jax.Array, weights_2b: jax.Array, total_weight: jax.Array,
                 axis_name: str | None) -> jax.Array:
  """This device's share of the global weighted mean, scaled for a `pmean` over devices.

  Summed over devices, `sum(values * weights) / total_weight` is the global mean
  and its gradient the global gradient; the train step `pmean`s, which divides
  by the device count, so the share is multiplied by it.
  """
  share = jnp.sum(values_2b * weights_2b) / jnp.maximum(total_weight, 1.0)
  if axis_name is None:
    return share
  return share * jax.lax.psum(1, axis_name)


def nt_xent(z1_BxD: jax.Array, z2_BxD: jax.Array, *, temperature: float,
            weights_B: jax.Array | None = None, axis_name: str | None = None) -> jax.Array:
  """Normalised-temperature cross-entropy between two views (Chen et al., 2020).

  The 2B projections are compared by cosine similarity over `temperature`. Each
  view's positive is the other view of its example; every other view of the batch
  is a negative, and a view is never compared with itself. The loss is the mean
  over the 2B views of real examples: examples of weight 0 (padding) are neither
  anchors nor negatives. Computed in float32.

  Under `jax.pmap` with `axis_name`, the projections of all devices are gathered
  so that negatives come from the whole global batch. Each device then returns
  its own anchors' share of the global mean times the device count: the `pmean`
  over devices of this value, and of its gradient (which `all_gather`'s transpose
  sums from every device's loss), equals the loss and gradient of one device on
  the concatenated batch. Under `jax.jit` over a mesh the batch is already
  global: leave `axis_name` None.

  Args:
    z1_BxD: projections of the first views.
    z2_BxD: projections of the second views, in the same example order.
    temperature: the softmax temperature tau.
    weights_B: per-example weights (the batch's mask); ones by default.
    axis_name: the pmap axis to gather negatives over, or None.

  Returns:
    The scalar loss.
  """
  if weights_B is None:
    weights_B = jnp.ones((z1_BxD.shape[0],), jnp.float32)
  losses, _, weights, total = _anchor_terms(z1_BxD, z2_BxD, weights_B,
                                            temperature=temperature, axis_name=axis_name)
  return _global_mean(losses, weights, total, axis_name)


def _two_views(augment: Callable[[jax.Array, jax.Array], jax.Array] | None,
               images_BxHxWxC: jax.Array, rng: jax.Array, first_index: jax.Array | int
               ) -> jax.Array:
  """Both views of every image, `[view 1 of all; view 2 of all]`, shape (2B, H, W, C).

  Each example's keys derive from its index in the global batch, so fixed-key
  views are the same on one device, over a mesh, and under pmap.
  """
  if augment is None:
    return jnp.concatenate([images_BxHxWxC, images_BxHxWxC])
  index_B = first_index + jnp.arange(images_BxHxWxC.shape[0])
  keys_Bx2 = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i)))(index_B)
  views_Bx2xHxWxC = jax.vmap(jax.vmap(augment, in_axes=(None, 0)))(images_BxHxWxC, keys_Bx2)
  return jnp.concatenate([views_Bx2xHxWxC[:, 0], views_Bx2xHxWxC[:, 1]])


def simclr(*, augment: Callable[[jax.Array, jax.Array], jax.Array] | None, temperature: float = 0.5,
           axis_name: str | None = None, image_key: str = 'image',
           projection_key: str = 'projection') -> Objective:
  """SimCLR (Chen et al., 2020): agree on two augmented views of each image.

  Every image is augmented twice (its own keys per view); the model runs once
  on all 2B views, so that BatchNorm normalises both views together, and
  `nt_xent` contrasts the projections. Evaluation draws the views from a fixed
  key, so its scores are deterministic. Labels are never read.

  The default temperature is 0.5, the best value the paper reports for small
  images and batches of hundreds (CIFAR-10, its appendix B.9); 0.1 suits
  ImageNet-sized batches of thousands, where many more negatives sharpen the softmax.

  Under `jax.pmap`, pass the step's `axis_name` to draw negatives from the global
  batch (see `nt_xent`); BatchNorm still normalises each device's views alone.
  In evaluation the metrics are this device's means, which `make_eval_step`
  combines by weight.

  Args:
    augment: `(image_HxWxC, rng) -> image_HxWxC`, e.g. `augment.crop_flip_jitter()`;
      None makes both views the image itself.
    temperature: the NT-Xent temperature.
    axis_name: the pmap axis to gather negatives over, or None.
    image_key: batch key of the images.
    projection_key: model output holding the projections.

  Returns:
    An objective whose metrics are `loss` and `accuracy` (how often a view's
    positive is its most similar candidate).
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    aug_rng, model_rng = jax.random.split(rng)
    if not train:
      aug_rng = jax.random.PRNGKey(_EVAL_KEY)
    images = batch[image_key]
    b = images.shape[0]
    first_index = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
    views = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
    views[image_key] = _two_views(augment, images, aug_rng, first_index)
    outputs, metrics = call_model(apply_fn, params, views, model_rng, model_state=model_state,
                                  train=train)
    z_2bxD = outputs[projection_key]
    losses, hits, weights, total = _anchor_terms(
        z_2bxD[:b], z_2bxD[b:], example_weights(batch), temperature=temperature,
        axis_name=axis_name)
    if train:
      loss = _global_mean(losses, weights, total, axis_name)
      accuracy = _global_mean(hits, weights, total, axis_name)
    else:
      loss, accuracy = mean_over(losses, weights), mean_over(hits, weights)
    return loss, {**metrics, 'loss': loss, 'accuracy': accuracy}

  return objective
