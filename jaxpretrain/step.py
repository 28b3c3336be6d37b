"""Pure train and eval steps built from an objective."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxpretrain import ema as ema_lib
from jaxpretrain import tree as tree_lib
from jaxpretrain.objectives.common import Batch, Metrics, Objective, example_weights
from jaxpretrain.state import TrainState

Step = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def _split_microbatches(batch: Batch, n: int) -> Batch:
  """Reshapes every leaf from (B, ...) to (n, B // n, ...)."""

  def split(x):
    if x.shape[0] % n:
      raise ValueError(f'batch of {x.shape[0]} does not split into grad_accum={n} '
                       'equal micro-batches; use a batch size divisible by grad_accum')
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])

  return jax.tree.map(split, batch)


def make_train_step(objective: Objective, *, grad_accum: int = 1, clip: float | None = None,
                    ema_decay: float = 0.0, axis_name: str | None = None) -> Step:
  """Builds a pure `(state, batch) -> (state, metrics)` training step.

  Gradients are taken only with respect to `state.params`; `state.frozen` is
  merged in as a constant, so frozen weights cost no gradient and no optimizer
  state.

  Args:
    objective: a function of the library's objective signature.
    grad_accum: number of equal micro-batches the batch is split into; their
      gradients are averaged before one update.
    clip: if set, gradients are scaled down to at most this global norm.
    ema_decay: if set, each update also moves the state's average of the
      parameters (`jaxpretrain.ema`, started with `ema.init`) by this decay.
    axis_name: the mapped axis to average gradients over when the step runs
      under `jax.pmap` (see `jaxpretrain.parallel.pmap`); None otherwise.

  Returns:
    The step function. Its metrics are the objective's, plus `grad_norm`.
  """

  def loss_fn(params, state: TrainState, batch, rng, model_state):
    full = tree_lib.merge(params, state.frozen) if state.frozen else params
    loss, metrics = objective(state.apply_fn, full, batch, rng, model_state=model_state,
                              train=True)
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated(state: TrainState, batch: Batch, rng: jax.Array):
    micro = _split_microbatches(batch, grad_accum)
    rngs = jax.random.split(rng, grad_accum)

    def body(carry, xs):
      grad_sum, model_state = carry
      (_, metrics), grads = grad_fn(state.params, state, xs[0], xs[1], model_state)
      model_state = metrics.pop('model_state', model_state)
      return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, model_state), metrics = jax.lax.scan(body, (zeros, state.model_state),
                                                    (micro, rngs))
    grads = jax.tree.map(lambda g: g / grad_accum, grad_sum)
    return grads, jax.tree.map(jnp.mean, metrics), model_state

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng, step_rng = jax.random.split(state.rng)
    if axis_name is not None:
      # Each device draws its own randomness for its own shard of the batch.
      step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    if grad_accum == 1:
      (_, metrics), grads = grad_fn(state.params, state, batch, step_rng, state.model_state)
      model_state = metrics.pop('model_state', state.model_state)
    else:
      grads, metrics, model_state = accumulated(state, batch, step_rng)
    if axis_name is not None:
      grads, metrics, model_state = jax.lax.pmean((grads, metrics, model_state), axis_name)
    grad_norm = optax.tree.norm(grads)
    if clip is not None:
      scale = jnp.minimum(1.0, clip / jnp.maximum(grad_norm, 1e-12))
      grads = jax.tree.map(lambda g: g * scale, grads)
    new_state = state.apply_gradients(grads, rng=rng, model_state=model_state)
    if ema_decay:
      new_state = ema_lib.update(new_state, ema_decay, state.step)
    return new_state, {**metrics, 'grad_norm': grad_norm}

  step.axis_name = axis_name
  return step


def make_eval_step(objective: Objective, *, axis_name: str | None = None
                   ) -> Callable[[TrainState, Batch], Metrics]:
  """Builds a pure `(state, batch) -> metrics` evaluation step.

  The objective runs with `train=False`. The metrics are means over the real
  examples of the batch, plus `weight`, the number of real examples, so that
  `jaxpretrain.metrics.MeanAccumulator` combines batches exactly. A state that
  keeps an average of its parameters (`jaxpretrain.ema`) is scored with it.
  """

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    state = ema_lib.averaged(state)
    loss, metrics = objective(state.apply_fn, state.all_params(), batch, state.rng,
                              model_state=state.model_state, train=False)
    metrics = {k: v for k, v in metrics.items() if k != 'model_state'}
    metrics['loss'] = loss
    weight = jnp.sum(example_weights(batch))
    if axis_name is not None:
      total = jax.lax.psum(weight, axis_name)
      metrics = jax.lax.psum(jax.tree.map(lambda m: m * weight, metrics), axis_name)
      metrics = jax.tree.map(lambda m: m / jnp.maximum(total, 1.0), metrics)
      weight = total
    return {**metrics, 'weight': weight}

  eval_step.axis_name = axis_name
  return eval_step


def apply_model(state: TrainState, batch: Batch) -> dict[str, Any]:
  """The model's outputs for a batch in inference mode (with averaged parameters if kept)."""
  state = ema_lib.averaged(state)
  return state.apply_fn(state.variables(), batch, train=False)
