"""Supervised objectives: classification and regression."""

import jax
import jax.numpy as jnp
import optax

from jaxpretrain.objectives.common import Objective, call_model, top1_hits, weighted_mean


def classification(*, label_smoothing: float = 0.0, label_key: str = 'label',
                   logits_key: str = 'logits',
                   soft_label_key: str | None = 'soft_label') -> Objective:
  """Softmax cross-entropy on integer labels, or on per-class target probabilities.

  When the batch carries `soft_label_key` (a BxK array of probabilities, as mixup
  and cutmix make), the loss is the cross-entropy against those and accuracy counts
  hits on each example's most probable class; otherwise both use `label_key`.

  Args:
    label_smoothing: mass spread uniformly over all classes.
    label_key: batch key of the integer labels.
    logits_key: model output holding the logits.
    soft_label_key: batch key of soft targets, read when present; None never reads them.

  Returns:
    An objective whose metrics are `loss` and `accuracy`.
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    outputs, metrics = call_model(apply_fn, params, batch, rng, model_state=model_state,
                                  train=train)
    logits_BxK = outputs[logits_key].astype(jnp.float32)
    if soft_label_key is not None and soft_label_key in batch:
      targets_BxK = batch[soft_label_key].astype(jnp.float32)
      labels_B = jnp.argmax(targets_BxK, axis=-1)
    else:
      labels_B = batch[label_key]
      targets_BxK = jax.nn.one_hot(labels_B, logits_BxK.shape[-1])
    targets_BxK = optax.smooth_labels(targets_BxK, label_smoothing)
    loss = weighted_mean(optax.softmax_cross_entropy(logits_BxK, targets_BxK), batch)
    correct_B = top1_hits(logits=logits_BxK, labels=labels_B)
    return loss, {**metrics, 'loss': loss, 'accuracy': weighted_mean(correct_B, batch)}

  return objective
