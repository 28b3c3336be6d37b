"""Parameter trees addressed by `/`-joined paths, and rules over those paths."""

from collections.abc import Callable, Mapping, Sequence
import re
from typing import Any

from flax import traverse_util
import jax
import numpy as np

from jaxpretrain.errors import ConfigError

PyTree = Any
Rules = Sequence[tuple[str, Any]]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Flattens a nested dict into `{'a/b/c': leaf}`."""
  return traverse_util.flatten_dict(dict(tree), sep='/') if tree else {}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat), sep='/') if flat else {}


def key_path_str(key_path: Sequence[Any]) -> str:
  """`/`-joined form of a `jax.tree_util` key path (dict keys, indices, attributes)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in key_path)


def merge(*trees: Mapping[str, Any]) -> dict[str, Any]:
  """Merges nested dicts with disjoint leaves (e.g. trainable and frozen)."""
  flat = {}
  for tree in trees:
    for path, leaf in flatten(tree).items():
      if path in flat:
        raise ValueError(f'parameter {path!r} appears in more than one tree')
      flat[path] = leaf
  return unflatten(flat)


def partition(tree: Mapping[str, Any], keep: Callable[[str], bool]) -> tuple[dict, dict]:
  """Splits a nested dict into (leaves whose path `keep` accepts, the rest)."""
  flat = flatten(tree)
  yes = {p: v for p, v in flat.items() if keep(p)}
  no = {p: v for p, v in flat.items() if not keep(p)}
  return unflatten(yes), unflatten(no)


def match_rules(tree: Mapping[str, Any], rules: Rules, *, name: str = 'rules') -> dict[str, Any]:
  """Maps every leaf path to the value of the first `(regex, value)` rule that matches.

  Regexes are matched with `re.fullmatch` against `/`-joined paths. Every leaf
  must be covered; add a catch-all `('.*', default)` rule to cover the rest.

  Returns:
    A flat dict `{path: value}`.
  """
  compiled = [(re.compile(pattern), value) for pattern, value in rules]
  out, uncovered = {}, []
  for path in flatten(tree):
    for regex, value in compiled:
      if regex.fullmatch(path):
        out[path] = value
        break
    else:
      uncovered.append(path)
  if uncovered:
    raise ConfigError(
        f'{name} leave {len(uncovered)} parameter(s) uncovered, e.g. {uncovered[:3]}; '
        f"add a rule that matches them, or a catch-all ('.*', value) at the end.")
  return out


def matching(tree: Mapping[str, Any], pattern: str) -> list[str]:
  """Paths of the leaves whose `/`-joined path fully matches `pattern`."""
  regex = re.compile(pattern)
  return [p for p in flatten(tree) if regex.fullmatch(p)]


def size(tree: PyTree) -> int:
  """Number of array elements in a pytree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def nbytes(tree: PyTree) -> int:
  """Bytes held by the arrays of a pytree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))
