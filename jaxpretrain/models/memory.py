"""Memory levers for deep models: rematerialised blocks, and layers scanned in one stack.

`remat` trades compute for memory: a rematerialised block keeps only its
input for the backward pass and recomputes the rest there.

* 'none': keep every activation the backward pass needs (fastest).
* 'block': recompute each block whole; memory holds one block's activations
  at a time plus every block's input.
* 'dots': keep the outputs of the dense layers' matmuls
  (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`, and the
  library's `Dense` by name) and recompute the cheap elementwise work,
  attention scores and norms between them. Convolutions are not matmuls to
  the policy: in a ResNet, 'dots' saves what 'block' saves.

`scan_layers` runs identical blocks with `nn.scan`: XLA compiles one block,
so compile time stops growing with depth. The parameters of the L blocks are
then stacked along a leading axis under `layers/` instead of living under
`layer_0/` ... `layer_{L-1}/`; `stack_layers` and `unstack_layers` convert
between the two layouts (checkpoints, imports and fine-tuning transforms use
them to read either).
"""

from collections.abc import Callable, Mapping
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    'none': None,
    'block': None,  # jax.checkpoint's default: save nothing inside the block
    # Matmuls without batch dimensions, and the library's `Dense`, whose custom backward
    # pass hides its matmul from the first policy.
    'dots': jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names('dense')),
}
STACKED = 'layers'
# The paths of scanned layers' parameters, for the fine-tuning transforms (`stacked=`).
STACKED_PATHS = r'(.*/)?layers/.*'
_LAYER = re.compile(r'layer_(\d+)')


def check_remat(remat: str) -> None:
  """Raises a ConfigError for a `remat` value not in `REMAT_POLICIES`."""
  if remat not in REMAT_POLICIES:
    raise ConfigError(f'unknown remat {remat!r}; use one of {list(REMAT_POLICIES)}')


def rematerialised(target: Any, remat: str, *, static_argnums: tuple[int, ...],
                   in_scan: bool = False) -> Any:
  """`target` (a Module class or a function of a module) under `nn.remat` as `remat` says.

  `static_argnums` count the module (or `self`) as argument 0: Python values
  such as `train` must be static. Inside a scan the loop already keeps XLA
  from merging the recomputation away, so CSE prevention is left off there.
  """
  check_remat(remat)
  if remat == 'none':
    return target
  return nn.remat(target, policy=REMAT_POLICIES[remat], static_argnums=static_argnums,
                  prevent_cse=not in_scan)


def _prefix(parts: list[str], at: int, name: str) -> str:
  return '/'.join(parts[:at] + [name])


def stack_layers(params: Mapping[str, Any], prefixes: set[str] | None = None) -> dict[str, Any]:
  """Params with `layer_{i}/...` subtrees stacked into `layers/...` (leading axis i).

  Works at any depth (`encoder/layer_0/...` becomes `encoder/layers/...`);
  with `prefixes`, only the stacks named there (e.g. `{'encoder/layers'}`).
  A tree without `layer_{i}` keys is returned as it is.

  Raises:
    ValueError: layers that are not numbered 0..L-1 or do not share one structure.
  """
  groups: dict[str, dict[int, dict[str, Any]]] = {}
  rest = {}
  for path, leaf in tree_lib.flatten(params).items():
    parts = path.split('/')
    hit = next((i for i, p in enumerate(parts) if _LAYER.fullmatch(p)), None)
    if hit is None or (prefixes is not None and _prefix(parts, hit, STACKED) not in prefixes):
      rest[path] = leaf
      continue
    index = int(_LAYER.fullmatch(parts[hit]).group(1))
    groups.setdefault(_prefix(parts, hit, STACKED), {}).setdefault(index, {})[
        '/'.join(parts[hit + 1:])] = leaf
  for prefix, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f'{prefix}: layers {sorted(layers)} are not numbered 0..{len(layers) - 1}')
    names = set(layers[0])
    if any(set(layer) != names for layer in layers.values()):
      raise ValueError(f'{prefix}: the layers do not all have the same parameters')
    for name in names:
      rest[f'{prefix}/{name}'] = np.stack([np.asarray(layers[i][name])
                                           for i in range(len(layers))])
  return tree_lib.unflatten(rest)


def unstack_layers(params: Mapping[str, Any], prefixes: set[str] | None = None
                   ) -> dict[str, Any]:
  """Inverse of `stack_layers`: `layers/...` of leading axis L into `layer_{i}/...`."""
  flat = {}
  for path, leaf in tree_lib.flatten(params).items():
    parts = path.split('/')
    at = parts.index(STACKED) if STACKED in parts else None
    if at is None or (prefixes is not None and _prefix(parts, at, STACKED) not in prefixes):
      flat[path] = leaf
      continue
    for i in range(np.shape(leaf)[0]):
      flat['/'.join(parts[:at] + [f'layer_{i}'] + parts[at + 1:])] = leaf[i]
  return tree_lib.unflatten(flat)


def _stacks(params: Mapping[str, Any]) -> tuple[set[str], set[str]]:
  """The `.../layers` prefixes of a tree's scanned stacks and of its numbered layers."""
  scanned, unrolled = set(), set()
  for path in tree_lib.flatten(params):
    parts = path.split('/')
    for i, part in enumerate(parts):
      if part == STACKED:
        scanned.add(_prefix(parts, i, STACKED))
      elif _LAYER.fullmatch(part):
        unrolled.add(_prefix(parts, i, STACKED))
  return scanned, unrolled


def like(params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
  """`params` with each stack of layers in the layout `target` has it in (scanned or not).

  Only stacks found in both trees, in different layouts, are converted.
  """
  ours, ours_unrolled = _stacks(params)
  theirs, theirs_unrolled = _stacks(target)
  to_stack = ours_unrolled & theirs
  to_unstack = ours & theirs_unrolled
  out = stack_layers(params, to_stack) if to_stack else dict(params)
  return unstack_layers(out, to_unstack) if to_unstack else out


