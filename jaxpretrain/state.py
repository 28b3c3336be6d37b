"""The immutable training state."""

from collections.abc import Callable
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import optax

from jaxpretrain import tree as tree_lib

ApplyFn = Callable[..., dict[str, Any]]


class TrainState(struct.PyTreeNode):
  """Everything a training step reads and writes, as one pytree.

  Attributes:
    step: number of optimizer updates applied so far.
    params: trainable parameters; gradients are taken only with respect to these.
    frozen: non-trainable parameters, passed to the model untouched.
    opt_state: optimizer state, for `params` only.
    rng: PRNG key, split once per step.
    model_state: non-parameter variables the model updates (e.g. `batch_stats`).
    extra: room for extensions (EMA parameters, schedules' state, ...).
    apply_fn: the model's pure apply function (static).
    tx: the optax transformation (static).
  """
  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any
  extra: Any
  apply_fn: ApplyFn = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, apply_fn: ApplyFn, params: Any, tx: optax.GradientTransformation,
             rng: jax.Array, frozen: Any = None, model_state: Any = None,
             extra: Any = None) -> 'TrainState':
    """Builds the state at step 0, with the optimizer initialised on `params` only."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen or {},
               opt_state=tx.init(params), rng=rng, model_state=model_state or {},
               extra=extra or {}, apply_fn=apply_fn, tx=tx)

  def all_params(self) -> dict[str, Any]:
    """Trainable and frozen parameters merged into the model's full tree."""
    if not self.frozen:
      return self.params
    return tree_lib.merge(self.params, jax.lax.stop_gradient(self.frozen))

  def variables(self) -> dict[str, Any]:
    """The variables dict to pass to `apply_fn`."""
    return {'params': self.all_params(), **self.model_state}

  def apply_gradients(self, grads: Any, **updates: Any) -> 'TrainState':
    """Returns a new state after one optimizer update of `params`."""
    deltas, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, deltas)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **updates)
