"""An exponential moving average (EMA) of the trainable parameters, for evaluation.

The average is kept in the train state's `extra[KEY]`, so it is checkpointed,
resumed and placed on devices with the rest of the state. Evaluation, prediction
and every reader of a checkpoint's parameters (`checkpoint.restore_params`, hence
`finetune.pretrained` and `loop.restore_model`) use the average when a run kept
one. Model state such as BatchNorm statistics is the live model's, not averaged.
"""

import jax
import jax.numpy as jnp

from jaxpretrain.state import TrainState

KEY = 'ema'
# Where the average sits in a saved train state.
PATH = f'extra/{KEY}'


def check_decay(decay: float) -> None:
  """Raises ValueError unless `0 <= decay < 1` (0 keeps no average)."""
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'EMA decay {decay} is outside [0, 1); use e.g. 0.999, or 0 to keep no '
                     'average')


def init(state: TrainState) -> TrainState:
  """Starts averaging: the average begins as the current trainable parameters."""
  return state.replace(extra={**state.extra, KEY: jax.tree.map(jnp.copy, state.params)})


def effective_decay(decay: float, step: jax.Array) -> jax.Array:
  """`decay`, held lower early on (`(1 + step) / (10 + step)`) so the first updates count.

  Without the warm-up the average would hold the initialisation for about
  `1 / (1 - decay)` steps.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update(state: TrainState, decay: float, step: jax.Array) -> TrainState:
  """Moves the average towards `state.params` after the update numbered `step` (from 0)."""
  if KEY not in state.extra:
    raise ValueError('the state keeps no parameter average; start one with ema.init(state)')
  d = effective_decay(decay, step)
  average = jax.tree.map(lambda a, p: (d * a + (1.0 - d) * p).astype(a.dtype),
                         state.extra[KEY], state.params)
  return state.replace(extra={**state.extra, KEY: average})


def averaged(state: TrainState) -> TrainState:
  """The state with its averaged parameters in place of `params` (itself without an average)."""
  if KEY not in state.extra:
    return state
  return state.replace(params=state.extra[KEY])
