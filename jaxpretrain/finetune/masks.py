"""Which parameters train: freezing by regex rules."""

from collections.abc import Sequence

from jaxpretrain import tree as tree_lib
from jaxpretrain.finetune.base import Transform, make_transform


def _rules(pattern: str | Sequence[tuple[str, bool]], value: bool) -> list[tuple[str, bool]]:
  if isinstance(pattern, str):
    return [(pattern, value), ('.*', not value)]
  return list(pattern)


def freeze(pattern: str | Sequence[tuple[str, bool]]) -> Transform:
  """Freezes parameters: no gradient and no optimizer state for them.

  Args:
    pattern: a regex (parameters whose `/`-joined path fully matches it are
      frozen), or ordered `(regex, frozen?)` rules that must cover every
      parameter, the first match winning.
  """
  rules = _rules(pattern, True)

  def trainable(params):
    frozen = tree_lib.match_rules(params, rules, name='freeze rules')
    return tree_lib.unflatten({p: not f for p, f in frozen.items()})

  return make_transform('freeze', trainable=trainable, rules=[list(r) for r in rules])
