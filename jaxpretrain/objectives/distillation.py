"""Distillation from a frozen teacher: the soft loss, and a classifier's distillation.

The teacher's parameters are the `teacher` subtree of the parameter tree
(`finetune.with_teacher`), and its BatchNorm statistics, if it has any, the
`teacher_state` subtree, so they are placed and sharded like the student's and
get no gradient or optimizer state. The language models' distillation (a
token task's soft targets) is `objectives.language.distillation`.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.errors
import jax
import jax.numpy as jnp
import optax

from jaxpretrain.errors import ConfigError
from jaxpretrain.objectives.common import (Batch, Objective, augment_images, call_model,
                                           top1_hits, weighted_mean)
from jaxpretrain.state import ApplyFn

TEACHER = 'teacher'  # Key of a frozen teacher's parameters in the parameter tree.
TEACHER_STATE = TEACHER + '_state'  # Key of its other collections (BatchNorm statistics).


def split_teacher(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """The student's parameters and the teacher's variables, from one parameter tree."""
  params = dict(params)
  if TEACHER not in params:
    raise ValueError(f"distillation needs the teacher's parameters under {TEACHER!r} in the "
                     "parameter tree; add them with finetune.with_teacher(...)")
  return params, {'params': params.pop(TEACHER), **params.pop(TEACHER_STATE, {})}


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float) -> jax.Array:
  """`T^2 * KL(softmax(teacher / T) || softmax(student / T))` over the last axis.

  The `T^2` keeps the gradient's scale independent of the temperature
  (Hinton et al., 2015).
  """
  t_logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  s_logp = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)


def teacher_logits(teacher_apply_fn: ApplyFn, teacher_variables: Mapping[str, Any],
                   inputs: Batch) -> jax.Array:
  """The frozen teacher's logits for `inputs`, in inference mode."""
  try:
    outputs = teacher_apply_fn(jax.lax.stop_gradient(dict(teacher_variables)), inputs,
                               train=False)
  except flax.errors.ScopeCollectionNotFound as e:
    raise ConfigError('the teacher keeps statistics besides its parameters (BatchNorm), but '
                      f'none came with it; give finetune.with_teacher its run or Hugging Face '
                      f'directory, which holds them, or put them under {TEACHER_STATE!r} in the '
                      f'parameter tree ({e})') from e
  return outputs['logits']


def classifier_distillation(teacher_apply_fn: ApplyFn, *,
                            augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                            temperature: float = 1.0, alpha: float = 1.0,
                            label_key: str = 'label', image_key: str = 'image') -> Objective:
  """A classifier learns `alpha * soft loss + (1 - alpha) * cross-entropy on labels`.

  With `alpha=1` no label is read in training: the student learns the frozen
  teacher's predictions on unlabelled images (`data.unlabelled`), the
  self-distillation that follows fine-tuning in SimCLRv2 (Chen et al., 2020).
  In training the teacher sees each image as it is and the student an
  augmented one, as in Noisy Student (Xie et al., 2020): a student started
  from its teacher then still has something to learn, the teacher's answer
  under augmentation.

  Args:
    teacher_apply_fn: the teacher model's `apply_fn`; its `logits` have the student's classes.
    augment: `(image_HxWxC, rng) -> image_HxWxC`, the student's augmentation in training.
    temperature: softening of both distributions in the soft loss.
    alpha: weight of the soft loss.
    label_key: batch key of the integer labels, where a batch has them.
    image_key: batch key of the images.

  Returns:
    An objective with metrics `loss`, `soft_loss`, `agreement` (top-1 of
    student and teacher equal) and, for batches with labels, `accuracy` and
    `hard_loss`.
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    student_params, teacher_variables = split_teacher(params)
    teacher_BxK = teacher_logits(teacher_apply_fn, teacher_variables, batch)
    if train and augment is not None:
      aug_rng, rng = jax.random.split(rng)
      batch = {**batch, image_key: augment_images(augment, batch[image_key], aug_rng)}
    outputs, metrics = call_model(apply_fn, student_params, batch, rng, model_state=model_state,
                                  train=train)
    logits_BxK = outputs['logits'].astype(jnp.float32)
    soft = weighted_mean(soft_cross_entropy(logits_BxK, teacher_BxK, temperature), batch)
    agree_B = top1_hits(logits=logits_BxK, labels=jnp.argmax(teacher_BxK, axis=-1))
    metrics = {**metrics, 'soft_loss': soft, 'agreement': weighted_mean(agree_B, batch)}
    loss = alpha * soft
    if label_key in batch:
      hard = weighted_mean(optax.softmax_cross_entropy_with_integer_labels(
          logits_BxK, batch[label_key]), batch)
      hits_B = top1_hits(logits=logits_BxK, labels=batch[label_key])
      metrics.update(hard_loss=hard, accuracy=weighted_mean(hits_B, batch))
      if alpha < 1.0:
        loss += (1.0 - alpha) * hard
    elif alpha < 1.0:
      raise ConfigError(f'distillation with alpha={alpha} learns from labels too, but the batch '
                        f'has no {label_key!r}; set objective.alpha=1.0 for unlabelled data')
    return loss, {**metrics, 'loss': loss}

  return objective
