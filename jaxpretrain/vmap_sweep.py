"""Sweeps as one program: K trials (learning rates, seeds) stacked and trained under `vmap`.

A learning-rate sweep usually compiles one step per rate, because optax closes
over the rate as a constant. Here the rate is data: `scaled(tx)` multiplies the
updates by an `lr_scale` kept in the optimizer state, so K trials differ only in
array values and share one compiled step. Stacked along a leading axis, the
trials run side by side on the same batches:

  >>> tx = scaled(optax.adamw(schedule, weight_decay=1e-4))
  >>> create = lambda rng: finetune.create_state(model, transform, tx=tx, rng=rng,
  ...                                            example_batch=batch)
  >>> states = trial_states(create, seeds=0, lr_scales=[0.3, 1.0, 3.0])
  >>> step = jax.jit(vmap_step(make_train_step(objective)), donate_argnums=0)
  >>> states, metrics = step(states, batch)       # metrics['loss'].shape == (3,)
  >>> best = unstack(states, int(jnp.argmin(metrics['loss'])))
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpretrain import tree as tree_lib
from jaxpretrain.state import TrainState
from jaxpretrain.step import Step


class LrScaleState(NamedTuple):
  """The state of `scaled`: the factor by which the trial's updates are multiplied."""
  lr_scale: jax.Array


def _is_scale_state(x: Any) -> bool:
  return isinstance(x, LrScaleState)


def scaled(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` followed by a multiplication of the updates by `lr_scale`, held in the state.

  The learning rate becomes `tx`'s rate (or schedule) times `lr_scale`, which
  starts at 1 and is set with `set_lr_scales`. For optimizers that end by
  scaling with the learning rate (`sgd`, `adam`, `adamw`, ...) this equals `tx`
  built with the rate multiplied by `lr_scale`; with `adamw` the decoupled
  weight decay, which optax multiplies by the rate, is scaled too, exactly as
  in `adamw(lr * lr_scale, weight_decay)`.

  Args:
    tx: the optimizer, e.g. `build.optimizer(cfg, total_steps)`.

  Returns:
    The optimizer, whose state is `(tx_state, LrScaleState)`.
  """

  def init(params: Any) -> LrScaleState:
    del params
    return LrScaleState(lr_scale=jnp.ones((), jnp.float32))

  def update(updates: Any, state: LrScaleState, params: Any = None) -> tuple[Any, LrScaleState]:
    del params
    return jax.tree.map(lambda u: (u * state.lr_scale).astype(u.dtype), updates), state

  return optax.chain(tx, optax.GradientTransformation(init, update))


def get_lr_scales(state: TrainState) -> jax.Array:
  """The learning-rate factor of each trial (a scalar for an unstacked state)."""
  found = [s.lr_scale for s in jax.tree.leaves(state.opt_state, is_leaf=_is_scale_state)
           if _is_scale_state(s)]
  if not found:
    raise ValueError('the optimizer state holds no lr_scale; build the optimizer with '
                     'vmap_sweep.scaled(tx)')
  return found[0]


def set_lr_scales(state: TrainState, scales: jax.typing.ArrayLike) -> TrainState:
  """Sets each trial's learning-rate factor.

  Args:
    state: a state whose optimizer was built with `scaled`, stacked or not.
    scales: one factor per trial (shape `(K,)`), or one for all of them.

  Returns:
    The state with every `lr_scale` of its optimizer state replaced.
  """
  current = get_lr_scales(state)  # Fails clearly if the optimizer is not `scaled`.
  scales = jnp.asarray(scales, jnp.float32)
  if scales.shape not in ((), current.shape):
    raise ValueError(f'got lr_scales of shape {scales.shape} for a state whose lr_scale has '
                     f'shape {current.shape}; pass one per trial or a single one')
  new = LrScaleState(lr_scale=jnp.broadcast_to(scales, current.shape))
  opt_state = jax.tree.map(lambda s: new if _is_scale_state(s) else s, state.opt_state,
                           is_leaf=_is_scale_state)
  return state.replace(opt_state=opt_state)


def _leaf_signatures(state: TrainState) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {tree_lib.key_path_str(path): (np.shape(x), jnp.result_type(x)) for path, x in leaves}


def _check_stackable(first: TrainState, other: TrainState, k: int) -> None:
  """Raises if trial `k` cannot share a compiled step with trial 0."""
  for field in ('apply_fn', 'tx'):
    if getattr(other, field) != getattr(first, field):
      raise ValueError(
          f'state {k} has another {field} than state 0; stacked trials share one static '
          f'{field}. Separate create_state calls build separate (if equivalent) objects: '
          'build the trials with trial_states, which calls create once under vmap, or '
          f'give every state the same {field} object')
  a, b = _leaf_signatures(first), _leaf_signatures(other)
  if a.keys() != b.keys():
    only = sorted(a.keys() ^ b.keys())
    raise ValueError(f'state {k} has another structure than state 0; {len(only)} leaves are '
                     f'in only one of them, e.g. {only[:3]}')
  if jax.tree.structure(other) != jax.tree.structure(first):
    raise ValueError(f'state {k} has the leaves of state 0 in other containers: '
                     f'{jax.tree.structure(other)} against {jax.tree.structure(first)}')
  for path, sig in a.items():
    if b[path] != sig:
      raise ValueError(f'state {k} differs from state 0 at {path!r}: shape and dtype '
                       f'{b[path]} against {sig}')


def stack(states: Sequence[TrainState]) -> TrainState:
  """Stacks K states of the same structure into one, with a leading trial axis.

  Args:
    states: train states with the same `apply_fn` and `tx` objects and leaves of
      the same shapes and dtypes.

  Returns:
    A state whose every leaf has shape `(K, ...)`.

  Raises:
    ValueError: the states cannot share a step; the message names what differs.
  """
  if not states:
    raise ValueError('stack needs at least one state')
  for k, state in enumerate(states[1:], start=1):
    _check_stackable(states[0], state, k)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def num_trials(state: TrainState) -> int:
  """K, the length of the leading trial axis of a stacked state."""
  if jnp.ndim(state.step) != 1:
    raise ValueError(f'the state is not stacked: its step has shape {jnp.shape(state.step)}, '
                     'not (K,)')
  return int(state.step.shape[0])


def unstack(state: TrainState, k: int) -> TrainState:
  """Trial `k` of a stacked state, as an ordinary state."""
  n = num_trials(state)
  if not -n <= k < n:
    raise IndexError(f'trial {k} out of range for {n} trials')
  return jax.tree.map(lambda x: x[k], state)


def _per_trial(name: str, values: Any) -> np.ndarray:
  values = np.asarray(values)
  if values.ndim > 1 or values.size == 0:
    raise ValueError(f'{name} must be one value or a non-empty sequence, got shape '
                     f'{values.shape}')
  return np.atleast_1d(values)


def trial_states(create: Callable[[jax.Array], TrainState], *,
                 seeds: int | Sequence[int] = 0,
                 lr_scales: float | Sequence[float] | None = None,
                 shared: Sequence[str] = ()) -> TrainState:
  """The stacked initial states of K trials, one per seed and learning-rate factor.

  `create` is traced once under `jax.vmap` over the trials' keys, so the trials
  share its `apply_fn` and `tx` and slice k equals `create(PRNGKey(seeds[k]))`;
  it must therefore be traceable, as `finetune.create_state` is.

  Args:
    create: builds one trial's state from a PRNG key.
    seeds: one seed per trial, or one for all (the same initialisation and
      randomness, as a fair comparison of learning rates wants).
    lr_scales: one learning-rate factor per trial, or one for all; needs a
      `scaled` optimizer. None leaves the optimizer as `create` built it.
    shared: state fields kept as one copy (trial 0's) instead of one per trial:
      `'frozen'` (the frozen parameters) and `'rng'`. With `vmap_step(step,
      shared=...)` the same fields, what depends only on them and the batch runs
      once for all trials: a sweep of linear probes sharing both computes the
      augmentation and the frozen encoder once per batch. Right when those
      fields are the same in every trial, as with one seed.

  Returns:
    The stacked state; K is the length of `seeds` or `lr_scales` (they must
    agree when both are sequences; K is 1 when both are single values).
  """
  seeds = _per_trial('seeds', seeds)
  scales = _per_trial('lr_scales', 1.0 if lr_scales is None else lr_scales)
  if len(seeds) > 1 and len(scales) > 1 and len(seeds) != len(scales):
    raise ValueError(f'{len(seeds)} seeds and {len(scales)} lr_scales; give as many of each, '
                     'or one to share')
  k = max(len(seeds), len(scales))
  keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in np.broadcast_to(seeds, k)])
  states = jax.vmap(create)(keys)
  _check_shared(shared)
  if 'rng' in shared and len(set(np.broadcast_to(seeds, k).tolist())) > 1:
    raise ValueError("shared=('rng',) gives every trial trial 0's randomness; it needs one seed")
  states = states.replace(**{f: jax.tree.map(lambda x: x[0], getattr(states, f))
                             for f in shared})
  if lr_scales is None:
    return states
  return set_lr_scales(states, np.broadcast_to(scales, k))


_SHAREABLE = ('frozen', 'rng')


def _check_shared(shared: Sequence[str]) -> None:
  unknown = set(shared) - set(_SHAREABLE)
  if unknown:
    raise ValueError(f'cannot share {sorted(unknown)} between trials; shareable: {_SHAREABLE}')


def vmap_step(step: Step, *, shared: Sequence[str] = ()) -> Step:
  """Runs a train step for all trials at once, every trial on the same batch.

  With `shared`, those state fields have no trial axis (see `trial_states`):
  computations that depend only on them and the batch, such as a frozen
  encoder's forward pass on identically augmented images, run once for all.

  The result is not jitted, so that it composes: `jax.jit(vmap_step(step),
  donate_argnums=0)` on one device, or `parallel.jit(vmap_step(step), mesh,
  states)` to split the batch over a mesh (trials replicated). Its metrics have a
  leading trial axis. Sharing the batch makes a comparison of learning rates
  fair and reads the data once for all trials.

  Under `vmap` a convolution whose kernels differ per trial becomes one grouped
  convolution, which XLA:CPU runs several times slower than K separate ones. On
  a CPU a sweep of convolutional models therefore gains one compilation instead
  of K, not speed per step, and running the trials in turn through one jitted
  step of a `scaled` optimizer keeps that gain without the slowdown (BENCHMARKS.md,
  "Vmapped sweep").
  """
  _check_shared(shared)
  if not shared:
    return jax.vmap(step, in_axes=(0, None))

  def run(states: TrainState, batch: Any) -> tuple[TrainState, Any]:
    # Axes as a prefix of the state: every field stacked but the shared ones.
    fields = ('step', 'params', 'frozen', 'opt_state', 'rng', 'model_state', 'extra')
    axes = states.replace(**{f: None if f in shared else 0 for f in fields})
    return jax.vmap(step, in_axes=(axes, None), out_axes=(axes, 0))(states, batch)

  return run
