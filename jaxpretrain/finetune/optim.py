"""Transforms that change how the optimizer treats each parameter."""

from collections.abc import Sequence

import jax
import optax

from jaxpretrain import tree as tree_lib
from jaxpretrain.finetune.base import Transform, make_transform


def _scale_updates(multipliers) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its own factor (stateless)."""

  def update(updates, state, params=None):
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def lr_multipliers(rules: Sequence[tuple[str, float]], *, default: float | None = 1.0
                   ) -> Transform:
  """Scales the learning rate of parameters by regex rules, e.g. a head at 10x.

  Args:
    rules: ordered `(regex, multiplier)` over `/`-joined paths; first match wins.
    default: multiplier of the parameters no rule matches; None makes an
      unmatched parameter an error.

  Example:
    >>> finetune.lr_multipliers([('head/.*', 10.0)])
  """
  all_rules = list(rules) + ([('.*', default)] if default is not None else [])

  def wrap_tx(tx, params):
    flat = tree_lib.match_rules(params, all_rules, name='lr_multipliers rules')
    return optax.chain(tx, _scale_updates(tree_lib.unflatten(flat)))

  return make_transform('lr_multipliers', wrap_tx=wrap_tx,
                        rules=[list(r) for r in rules], default=default)
