"""Which parameters train: freezing by regex rules, probes, BitFit, gradual unfreezing."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune.base import Transform, make_transform


def _rules(pattern: str | Sequence[tuple[str, bool]], value: bool) -> list[tuple[str, bool]]:
  if isinstance(pattern, str):
    return [(pattern, value), ('.*', not value)]
  return list(pattern)


def trainable_where(rules: Sequence[tuple[str, bool]], name: str):
  """A `trainable` function from `(regex, trains?)` rules."""

  def trainable(params):
    return tree_lib.unflatten(tree_lib.match_rules(params, rules, name=name))

  return trainable


def freeze(pattern: str | Sequence[tuple[str, bool]]) -> Transform:
  """Freezes parameters: no gradient and no optimizer state for them.

  Args:
    pattern: a regex (parameters whose `/`-joined path fully matches it are
      frozen), or ordered `(regex, frozen?)` rules that must cover every
      parameter, the first match winning.
  """
  rules = _rules(pattern, True)
  return make_transform('freeze', trainable=trainable_where(
      [(r, not frozen) for r, frozen in rules], 'freeze rules'),
                        rules=[list(r) for r in rules])


def linear_probe(head: str = 'head/.*') -> Transform:
  """Trains the head only: everything else is frozen."""
  return make_transform('linear_probe', trainable=trainable_where(
      [(head, True), ('.*', False)], 'linear_probe'), head=head)


def bitfit(head: str | None = 'head/.*') -> Transform:
  """Trains the biases (and the head) only, as in BitFit (Ben Zaken et al., 2022).

  Args:
    head: parameters that train whole besides the biases; None for biases only.
  """
  rules = ([(head, True)] if head else []) + [('(.*/)?bias', True), ('.*', False)]
  return make_transform('bitfit', trainable=trainable_where(rules, 'bitfit'), head=head)


class GateState(NamedTuple):
  """Optimizer state of a parameter group that starts updating at some step."""
  count: jax.Array
  inner: Any


def _starting_at(inner: optax.GradientTransformation, start: int
                 ) -> optax.GradientTransformation:
  """`inner`, but updates are zero, and `inner`'s state untouched, before step `start`."""

  def init(params):
    return GateState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    def run(_):
      return inner.update(updates, state.inner, params)

    def hold(_):
      return jax.tree.map(jnp.zeros_like, updates), state.inner

    new_updates, new_inner = jax.lax.cond(state.count >= start, run, hold, None)
    return new_updates, GateState(state.count + 1, new_inner)

  return optax.GradientTransformation(init, update)


def unfreeze_schedule(schedule: Sequence[tuple[int, str]]) -> Transform:
  """Gradual unfreezing: each group of parameters starts training at its own step.

  Parameters matched by no entry stay frozen throughout. A group that has not
  started yet gets zero updates and its optimizer state stays at init, so
  Adam's moments and the learning-rate schedule (warm-up included) begin when
  the group unfreezes. Its gradient is still computed (the step's program is
  the same at every step); only frozen parameters avoid that cost.

  Args:
    schedule: `(step, regex)` entries; a parameter belongs to the first entry
      whose regex fully matches its path, and updates from that step on.

  Example:
    >>> finetune.unfreeze_schedule([(0, 'head/.*'), (200, 'encoder/stage1.*'),
    ...                             (400, 'encoder/.*')])
  """
  schedule = [(int(step), pattern) for step, pattern in schedule]
  if any(step < 0 for step, _ in schedule) or not schedule:
    raise ConfigError(f'unfreeze_schedule needs (step >= 0, regex) entries, got {schedule}')

  trainable = trainable_where([(p, True) for _, p in schedule] + [('.*', False)],
                              'unfreeze_schedule')

  def wrap_tx(tx, params):
    labels = tree_lib.unflatten(tree_lib.match_rules(
        params, [(p, str(i)) for i, (_, p) in enumerate(schedule)], name='unfreeze_schedule'))
    groups = {str(i): tx if step == 0 else _starting_at(tx, step)
              for i, (step, _) in enumerate(schedule)}
    return optax.multi_transform(groups, labels)

  return make_transform('unfreeze_schedule', trainable=trainable, wrap_tx=wrap_tx,
                        schedule=[list(e) for e in schedule])
