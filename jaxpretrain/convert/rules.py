r"""PyTorch state dicts renamed onto our variables by ordered rules.

A rule is `(regex over a PyTorch module name, our module path, kind)`: the
first rule whose regex matches a weight's module name, and whose kind knows the
weight's last name part (`weight`, `bias`, `running_mean`, ...), gives the
weight's path, `\1`-style groups filled in from the match. The kind's `Kind`
says what that last part is called here and how the value changes layout.
`hf` and `hf_vision` hold the rules of each family; this module applies them,
after `resolve` has chosen what a checkpoint loads as.
"""

from collections.abc import Callable, Mapping
import logging
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError, ConfigError

# (regex over a PyTorch module name, our module path, kind).
Rule = tuple[str, str, str]


class Unused(NamedTuple):
  """A stored value that no model here uses, left out and logged with `why`."""
  why: str = ''


# Our name for a PyTorch leaf: a path below the rule's target ('kernel'), a
# (collection, name) pair for a path that starts with the collection
# (('batch_stats', 'mean') -> 'batch_stats/<target>/mean'), or `Unused`.
Leaf = str | tuple[str, str] | Unused


class Kind(NamedTuple):
  """How one kind of PyTorch module's weights become ours.

  Attributes:
    leaves: its PyTorch leaf names -> ours (see `Leaf`); other leaves do not
      match the kind's rules.
    weight: the layout change of its `weight` (e.g. `linear_kernel`); None
      keeps it.
    split: for a fused projection, the sub-modules its value splits into,
      evenly along the last axis.
    repeats: whether a value may repeat one already converted to the same path
      (the first one is kept), as for heads that older versions store twice.
  """
  leaves: Mapping[str, Leaf]
  weight: Callable[[np.ndarray], np.ndarray] | None = None
  split: tuple[str, ...] = ()
  repeats: bool = False


def resolve(hf_config: Mapping[str, Any], architecture: str | None,
            families: Mapping[str, tuple[str, str]],
            architectures: Mapping[str, tuple[str, str]], *, backbone: str
            ) -> tuple[str, str, str]:
  """The weight prefix, architecture and task a supported `model_type`'s checkpoint loads as.

  Args:
    hf_config: the contents of a `config.json`, with a `model_type` in `families`.
    architecture: the one asked for; else `architectures[0]` of `hf_config`,
      else the family's backbone-only one.
    families: model_type -> (the prefix its task models put before the
      backbone's weights, the backbone-only architecture).
    architectures: architecture -> (model_type, task).
    backbone: what the backbone is called, for messages.

  Raises:
    ConfigError: the architecture is not one of the model_type's.
  """
  model_type = hf_config['model_type']
  prefix, default = families[model_type]
  architecture = architecture or (hf_config.get('architectures') or [default])[0]
  if architectures.get(architecture, (None,))[0] != model_type:
    supported = [a for a, (t, _) in architectures.items() if t == model_type]
    raise ConfigError(f'architecture {architecture!r} is not supported for model_type '
                      f'{model_type!r}; supported: {supported}. Pass architecture=... to load '
                      f'the {backbone} or another compatible model.')
  return prefix, architecture, architectures[architecture][1]


def linear_kernel(weight: np.ndarray) -> np.ndarray:
  """A PyTorch `Linear` weight (out, in) as a Flax kernel (in, out)."""
  return weight.T


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """A PyTorch `Conv2d` weight (out, in, h, w) as a Flax kernel (h, w, in, out)."""
  return weight.transpose(2, 3, 1, 0)


def collect(flat: Mapping[str, np.ndarray], sources: Mapping[str, str], unused: list[str],
            expected: Mapping[str, tuple[int, ...]], architecture: str) -> dict[str, Any]:
  """What `rename` gave, as the nested float32 variables whose shapes `expected` gives.

  Args:
    flat, sources, unused: as `rename` returns them.
    expected: our variables' shapes by `/`-joined path; converted values on
      other paths are left out, and logged at INFO level with `unused`.
    architecture: the model's name, for messages.

  Raises:
    CheckpointMismatchError: missing or wrongly shaped weights.
  """
  unused = [*unused, *sorted({sources[p] for p in flat if p not in expected})]
  if unused:
    logging.info('load_hf: %s does not use these checkpoint weights: %s', architecture,
                 ', '.join(unused))
  flat = {p: v for p, v in flat.items() if p in expected}
  check(flat, sources, expected, architecture)
  return tree_lib.unflatten({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})


def rename(state_dict: Mapping[str, Any], prefix: str, rules: tuple[Rule, ...],
           kinds: Mapping[str, Kind], *, unused: Callable[[str], Any] = lambda name: False
           ) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
  """Renames and reshapes PyTorch weights onto our `/`-joined paths.

  Args:
    state_dict: PyTorch weight names to arrays.
    prefix: what task models put before the backbone's weight names; rules
      match the names without it.
    rules: ordered `Rule`s; the first that matches wins.
    kinds: each rule kind's `Kind`.
    unused: whether a name (without `prefix`) that no rule knows is a stored
      value no model here uses rather than an error.

  Returns:
    `(flat, sources, unused)`: our values by path, the PyTorch name each came
    from, and the PyTorch names deliberately left out.

  Raises:
    CheckpointMismatchError: listing the weights that no rule knows, or naming
      two that convert to the same path.
  """
  compiled = [(re.compile(pattern), target, kind) for pattern, target, kind in rules]
  flat, sources, left_out, unknown = {}, {}, [], []
  for name in sorted(state_dict):
    module, _, leaf = name.removeprefix(prefix).rpartition('.')
    hit = next(((m, t, k) for p, t, k in compiled
                if leaf in kinds[k].leaves and (m := p.fullmatch(module))), None)
    if hit is None:
      (left_out if unused(name.removeprefix(prefix)) else unknown).append(name)
      continue
    match, target, kind = hit
    spec, ours = kinds[kind], kinds[kind].leaves[leaf]
    if isinstance(ours, Unused):
      left_out.append(f'{name} ({ours.why})' if ours.why else name)
      continue
    path = _path(match.expand(target), ours)
    value = np.asarray(state_dict[name])
    if leaf == 'weight' and spec.weight is not None:
      value = spec.weight(value)
    if spec.repeats and path in flat:
      continue
    if path in flat:
      raise CheckpointMismatchError(f'{sources[path]} and {name} both convert to {path}; pass '
                                    'architecture=... for the model the checkpoint was saved from.')
    if spec.split:
      base, _, leaf_name = path.rpartition('/')
      for part, piece in zip(spec.split, np.array_split(value, len(spec.split), axis=-1)):
        part_path = f'{base}/{part}/{leaf_name}'
        flat[part_path], sources[part_path] = piece, name
      continue
    flat[path], sources[path] = value, name
  if unknown:
    raise CheckpointMismatchError(
        f'{len(unknown)} checkpoint weight(s) match nothing jaxpretrain.convert knows: '
        f'{unknown[:20]}{" ..." if len(unknown) > 20 else ""}. The checkpoint may come from a '
        'variant of the architecture that is not supported.')
  return flat, sources, left_out


def _path(target: str, ours: str | tuple[str, str]) -> str:
  if isinstance(ours, tuple):
    collection, leaf_name = ours
    return f'{collection}/{target}/{leaf_name}'
  return f'{target}/{ours}'


def shapes(model: nn.Module, batch: Any) -> dict[str, Any]:
  """The variable shapes, by collection, of `model.init` on `batch` in eval mode."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))


def check(flat: Mapping[str, np.ndarray], sources: Mapping[str, str],
          expected: Mapping[str, tuple[int, ...]], architecture: str) -> None:
  """Raises if a variable is missing or has the wrong shape."""
  missing = sorted(p for p in expected if p not in flat)
  if missing:
    raise CheckpointMismatchError(
        f'the checkpoint lacks weights that {architecture} needs: {missing}. Check that the '
        'directory holds all weight files, or pass architecture=... for a model that fits.')
  wrong = [f'{sources[p]} {np.shape(flat[p])} for {p} {expected[p]}' for p in sorted(flat)
           if tuple(np.shape(flat[p])) != expected[p]]
  if wrong:
    raise CheckpointMismatchError(
        f'weights whose shapes disagree with config.json (converted shape, then what '
        f'{architecture} expects): {wrong}')
