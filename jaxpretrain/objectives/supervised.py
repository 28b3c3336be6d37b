"""Supervised objectives: classification and regression."""

import jax
import jax.numpy as jnp
import optax

from jaxpretrain.objectives.common import Objective, call_model, top1_hits, weighted_mean


def classification(*, label_smoothing: float = 0.0, label_key: str = 'label',
                   logits_key: str = 'logits') -> Objective:
  """Softmax cross-entropy on integer labels.

  Args:
    label_smoothing: mass spread uniformly over all classes.
    label_key: batch key of the integer labels.
    logits_key: model output holding the logits.

  Returns:
    An objective whose metrics are `loss` and `accuracy`.
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    outputs, metrics = call_model(apply_fn, params, batch, rng, model_state=model_state,
                                  train=train)
    logits_BxK = outputs[logits_key].astype(jnp.float32)
    labels_B = batch[label_key]
    targets_BxK = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxK.shape[-1]),
                                      label_smoothing)
    loss = weighted_mean(optax.softmax_cross_entropy(logits_BxK, targets_BxK), batch)
    correct_B = top1_hits(logits=logits_BxK, labels=labels_B)
    return loss, {**metrics, 'loss': loss, 'accuracy': weighted_mean(correct_B, batch)}

  return objective
