"""What every objective shares: the signature, masked means, and calling the model."""

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxpretrain.state import ApplyFn

Batch = Mapping[str, Any]
Metrics = dict[str, Any]


class Objective(Protocol):
  """`loss, metrics = objective(apply_fn, params, batch, rng, *, model_state, train)`."""

  def __call__(self, apply_fn: ApplyFn, params: Any, batch: Batch, rng: jax.Array, *,
               model_state: Any = None, train: bool = True) -> tuple[jax.Array, Metrics]:
    ...


def example_weights(batch: Batch) -> jax.Array:
  """Per-example weights: the batch's `mask` (0 for padding) or ones."""
  n = jax.tree.leaves(batch)[0].shape[0]
  mask = batch.get('mask')
  return jnp.ones((n,), jnp.float32) if mask is None else mask.astype(jnp.float32)


def mean_over(values: jax.Array, weights: jax.Array) -> jax.Array:
  """`sum(values * weights) / sum(weights)`, and 0 when nothing weighs."""
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def top1_hits(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where the label's logit is the largest (ties count as hits), else 0.0.

  `argmax(logits) == labels` but for ties, without the (value, index) reduction
  of an argmax, which XLA:CPU runs slowly over a vocabulary of logits.
  """
  target = jnp.take_along_axis(logits, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return (target >= jnp.max(logits, axis=-1)).astype(jnp.float32)


def weighted_mean(values_B: jax.Array, batch: Batch) -> jax.Array:
  """Mean of per-example values in which padded examples weigh zero."""
  return mean_over(values_B, example_weights(batch))


def call_model(apply_fn: ApplyFn, params: Any, inputs: Any, rng: jax.Array, *,
               model_state: Any, train: bool) -> tuple[dict[str, Any], Metrics]:
  """Runs the model; returns its outputs and, in training, the new model state as metrics."""
  variables = {'params': params, **(model_state or {})}
  outputs = dict(apply_fn(variables, inputs, train=train, rngs={'dropout': rng}))
  new_state = outputs.pop('model_state', None)
  return outputs, ({} if new_state is None else {'model_state': new_state})


ObjectiveFactory = Callable[..., Objective]


def with_augmentation(objective: Objective, augment: Callable[[jax.Array, jax.Array], jax.Array],
                      *, image_key: str = 'image') -> Objective:
  """Wraps an objective so that, in training, each image is augmented first.

  `augment` is `(image_HxWxC, rng) -> image_HxWxC`, run per example with its own key
  (see `jaxpretrain.data.augment`). Evaluation sees the images unchanged.
  """
  def wrapped(apply_fn, params, batch, rng, *, model_state=None, train=True):
    if train:
      aug_rng, rng = jax.random.split(rng)
      batch = {**batch, image_key: augment_images(augment, batch[image_key], aug_rng)}
    return objective(apply_fn, params, batch, rng, model_state=model_state, train=train)

  return wrapped


def augment_images(augment: Callable[[jax.Array, jax.Array], jax.Array] | None,
                   images_BxHxWxC: jax.Array, rng: jax.Array) -> jax.Array:
  """`augment` applied to every image of a batch, each with its own key (None: unchanged)."""
  if augment is None:
    return images_BxHxWxC
  return jax.vmap(augment)(images_BxHxWxC, jax.random.split(rng, images_BxHxWxC.shape[0]))
