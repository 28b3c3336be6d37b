"""Language-model objectives: masked LM, causal LM, and distillation from a teacher.

Each is built from a `TokenTask`: how a batch becomes the model's inputs, the
targets, and a weight for every predicted position. The objective is then the
weighted mean of a per-position loss, and distillation reuses the same task
with a teacher's soft targets added.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpretrain.objectives.common import (Batch, Objective, call_model, example_weights,
                                           mean_over, top1_hits)
from jaxpretrain.objectives.distillation import soft_cross_entropy, split_teacher, teacher_logits
from jaxpretrain.state import ApplyFn


class TokenTask(NamedTuple):
  """What a token-prediction objective predicts.

  Attributes:
    prepare: `(batch, rng) -> (model_inputs, targets_BxN, weights_BxN)`; the
      model's `logits` must come out as `(B, N, V)` for these inputs.
  """
  prepare: Callable[[Batch, jax.Array], tuple[Batch, jax.Array, jax.Array]]


def select_for_masking(rng: jax.Array, eligible_BxL: jax.Array, *, rate: float,
                       max_predictions: int) -> tuple[jax.Array, jax.Array]:
  """Picks `round(rate * eligible tokens)` random positions per row (at most `max_predictions`).

  Returns:
    `(positions_BxM, weights_BxM)`: distinct positions, and 1 for the picked
    ones, 0 for the unused slots (whose position is arbitrary).
  """
  scores_BxL = jnp.where(eligible_BxL, jax.random.uniform(rng, eligible_BxL.shape), -1.0)
  _, positions_BxM = jax.lax.top_k(scores_BxL, max_predictions)
  count_B = jnp.round(rate * jnp.sum(eligible_BxL, axis=-1))
  count_B = jnp.clip(count_B, jnp.minimum(1, jnp.sum(eligible_BxL, axis=-1)), max_predictions)
  weights_BxM = (jnp.arange(max_predictions)[None, :] < count_B[:, None]).astype(jnp.float32)
  return positions_BxM.astype(jnp.int32), weights_BxM


def mlm_task(*, mask_id: int, vocab_size: int, special_ids: Sequence[int], rate: float = 0.15,
             max_predictions: int | None = None, mask_prob: float = 0.8,
             random_prob: float = 0.1) -> TokenTask:
  """BERT's masked-LM task with RoBERTa's dynamic masking.

  Every call draws new positions from its rng (so every step masks afresh):
  `rate` of each row's real, non-special tokens; of those, `mask_prob` become
  `mask_id`, `random_prob` a random non-special token, the rest stay. The model
  receives `masked_positions` (B, M) and should return logits only there.

  Args:
    mask_id: id of the mask token.
    vocab_size: size of the vocabulary (random replacements are drawn from it).
    special_ids: ids never masked and never drawn as replacements (pad, CLS, ...).
    rate: fraction of eligible tokens predicted.
    max_predictions: M, the fixed number of prediction slots per row (default
      `ceil(rate * L) + 1`); rows with more eligible tokens predict M of them.
    mask_prob: fraction of the picked tokens replaced by `mask_id`.
    random_prob: fraction replaced by a random token.
  """
  special = jnp.asarray(sorted(set(special_ids)), jnp.int32)

  def prepare(batch, rng):
    ids_BxL = jnp.asarray(batch['input_ids'])
    length = ids_BxL.shape[1]
    slots = max_predictions or int(-(-rate * length // 1)) + 1
    real_BxL = batch.get('attention_mask', jnp.ones_like(ids_BxL)).astype(bool)
    eligible_BxL = real_BxL & ~jnp.isin(ids_BxL, special)
    pick_rng, kind_rng, token_rng = jax.random.split(rng, 3)
    positions_BxM, weights_BxM = select_for_masking(pick_rng, eligible_BxL, rate=rate,
                                                    max_predictions=slots)
    targets_BxM = jnp.take_along_axis(ids_BxL, positions_BxM, axis=1)
    kind_BxM = jax.random.uniform(kind_rng, targets_BxM.shape)
    random_BxM = jax.random.randint(token_rng, targets_BxM.shape, 0, vocab_size, jnp.int32)
    random_BxM = jnp.where(jnp.isin(random_BxM, special), targets_BxM, random_BxM)
    new_BxM = jnp.where(kind_BxM < mask_prob, mask_id,
                        jnp.where(kind_BxM < mask_prob + random_prob, random_BxM, targets_BxM))
    # Unused slots write back the original token, so they change nothing.
    new_BxM = jnp.where(weights_BxM > 0, new_BxM, targets_BxM)
    rows_Bx1 = jnp.arange(ids_BxL.shape[0])[:, None]
    masked_BxL = ids_BxL.at[rows_Bx1, positions_BxM].set(new_BxM.astype(ids_BxL.dtype))
    inputs = {**batch, 'input_ids': masked_BxL, 'masked_positions': positions_BxM}
    return inputs, targets_BxM, weights_BxM * example_weights(batch)[:, None]

  return TokenTask(prepare)


def clm_task() -> TokenTask:
  """Next-token prediction; with `segment_ids`, never across packed documents.

  Position t predicts token t + 1 when both are real tokens (`attention_mask`)
  of the same document (`segment_ids`, if the batch packs several per row).
  """

  def prepare(batch, rng):
    del rng
    ids_BxL = jnp.asarray(batch['input_ids'])
    real_BxL = batch.get('attention_mask', jnp.ones_like(ids_BxL)).astype(bool)
    valid_BxL = jnp.zeros_like(real_BxL).at[:, :-1].set(real_BxL[:, :-1] & real_BxL[:, 1:])
    if 'segment_ids' in batch:
      seg_BxL = batch['segment_ids']
      same_BxL = jnp.zeros_like(real_BxL).at[:, :-1].set(seg_BxL[:, :-1] == seg_BxL[:, 1:])
      valid_BxL &= same_BxL
    targets_BxL = jnp.zeros_like(ids_BxL).at[:, :-1].set(ids_BxL[:, 1:])
    weights_BxL = valid_BxL.astype(jnp.float32) * example_weights(batch)[:, None]
    return batch, targets_BxL, weights_BxL

  return TokenTask(prepare)


def _predict(task: TokenTask, apply_fn: ApplyFn, params: Any, batch: Batch, rng: jax.Array, *,
             model_state: Any, train: bool, fused: bool = True):
  """Runs the task's inputs through the model: inputs, logits, targets, weights, hard metrics.

  With `fused`, the model is handed the targets too; a model that then returns
  their cross-entropy (`nll_sum`, `hits`: the LM heads) never materialises the
  logits, and `logits` comes back as None.
  """
  prep_rng, model_rng = jax.random.split(rng)
  inputs, targets_BxN, weights_BxN = task.prepare(batch, prep_rng)
  model_inputs = ({**inputs, 'targets': targets_BxN, 'target_weights': weights_BxN}
                  if fused else inputs)
  outputs, metrics = call_model(apply_fn, params, model_inputs, model_rng,
                                model_state=model_state, train=train)
  if 'nll_sum' in outputs:
    logits_BxNxV = None
    nll = outputs['nll_sum'] / jnp.maximum(jnp.sum(weights_BxN), 1.0)
    hits_BxN = jax.lax.stop_gradient(outputs['hits'])
  else:
    logits_BxNxV = outputs['logits'].astype(jnp.float32)
    nll = mean_over(optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, targets_BxN),
                    weights_BxN)
    hits_BxN = top1_hits(logits=jax.lax.stop_gradient(logits_BxNxV), labels=targets_BxN)
  metrics = {**metrics, 'accuracy': mean_over(hits_BxN, weights_BxN),
             'tokens': jnp.sum(weights_BxN)}
  return inputs, logits_BxNxV, weights_BxN, nll, metrics


def token_objective(task: TokenTask) -> Objective:
  """The mean cross-entropy of a task's targets over its weighted positions.

  Metrics: `loss` (mean negative log-likelihood per predicted token; its
  exponential is the perplexity), `accuracy` (top-1 over predicted tokens) and
  `tokens` (predicted tokens in the batch).
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    _, _, _, loss, metrics = _predict(task, apply_fn, params, batch, rng,
                                      model_state=model_state, train=train)
    return loss, {**metrics, 'loss': loss}

  return objective


def masked_lm(*, mask_id: int, vocab_size: int, special_ids: Sequence[int], rate: float = 0.15,
              max_predictions: int | None = None) -> Objective:
  """BERT/RoBERTa masked-LM pre-training (see `mlm_task`)."""
  return token_objective(mlm_task(mask_id=mask_id, vocab_size=vocab_size,
                                  special_ids=special_ids, rate=rate,
                                  max_predictions=max_predictions))


def causal_lm() -> Objective:
  """GPT next-token pre-training (see `clm_task`)."""
  return token_objective(clm_task())


def distillation(task: TokenTask, teacher_apply_fn: ApplyFn, *, temperature: float = 2.0,
                 alpha: float = 0.5) -> Objective:
  """Knowledge distillation: `alpha * soft loss + (1 - alpha) * hard loss`.

  The teacher, frozen, runs inside the same step on the student's inputs (the
  same masks), in inference mode. Its parameters are the `teacher` subtree of
  the parameter tree (`finetune.with_teacher`), so they are placed and
  sharded like the student's and get no gradient or optimizer state.

  Args:
    task: what is predicted (e.g. `mlm_task(...)` for DistilBERT).
    teacher_apply_fn: the teacher model's `apply_fn`.
    temperature: softening of both distributions in the soft loss.
    alpha: weight of the soft loss.

  Returns:
    An objective with metrics `loss`, `soft_loss`, `hard_loss`, `accuracy`.
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    student_params, teacher_variables = split_teacher(params)
    # The soft loss needs the student's logits.
    inputs, logits_BxNxV, weights_BxN, hard, metrics = _predict(
        task, apply_fn, student_params, batch, rng, model_state=model_state, train=train,
        fused=False)
    soft = mean_over(soft_cross_entropy(logits_BxNxV,
                                        teacher_logits(teacher_apply_fn, teacher_variables, inputs),
                                        temperature),
                     weights_BxN)
    loss = alpha * soft + (1.0 - alpha) * hard
    return loss, {**metrics, 'loss': loss, 'soft_loss': soft, 'hard_loss': hard}

  return objective
