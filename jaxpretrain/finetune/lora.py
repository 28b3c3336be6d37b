"""LoRA (Hu et al., 2021): low-rank adapters on frozen weights, and their merge and export.

The adapters of a kernel `W` at path `p` live under `lora/p/a` and `lora/p/b` in
the parameter tree. At call time the model sees `W + scale * reshape(a @ b)`:
by default the kernel's trailing axis is its output and the others its input,
so dense kernels and convolution kernels (a `kh*kw*c_in` by `c_out` product, as
a rank-r conv then a 1x1 conv) are adapted the same way; multi-axis projections
(attention's `(embed, heads, head_dim)` kernels) say how many leading axes are
input with `input_axes`.
"""

from collections.abc import Mapping, Sequence
import json
import math
import os
import re
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxpretrain import paths
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError, ConfigError, MissingFileError
from jaxpretrain.finetune.base import Params, Transform, chain, make_transform
from jaxpretrain.finetune.masks import trainable_where
from jaxpretrain.finetune.surgery import path_key, from_pretrained
from jaxpretrain.models.memory import STACKED_PATHS

ADAPTERS = 'lora'  # Top-level key of the adapters in the parameter tree.


InputAxes = Sequence[tuple[str, int]]


def _lead(path: str, stacked: str | None) -> int:
  return 1 if stacked and re.fullmatch(stacked, path) else 0


def _factor_shapes(path: str, shape: tuple[int, ...], rank: int, stacked: str | None,
                   input_axes: InputAxes) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Shapes of `a` and `b` for a kernel (stacked layers first, then input, then output)."""
  lead = _lead(path, stacked)
  n_in = next((n for pattern, n in input_axes if re.fullmatch(pattern, path)),
              len(shape) - lead - 1)
  if not 1 <= n_in < len(shape) - lead:
    raise ConfigError(f'LoRA on {path!r} of shape {shape}: {n_in} input axes leave no '
                      'input or no output axis')
  fan_in, fan_out = math.prod(shape[lead:lead + n_in]), math.prod(shape[lead + n_in:])
  return (*shape[:lead], fan_in, rank), (*shape[:lead], rank, fan_out)


def _fold(params: Params, adapters: Params, *, scale: float, dropout: float = 0.0,
          rng: jax.Array | None = None) -> Params:
  """Parameters with every adapted kernel replaced by `W + scale * a @ b`."""
  flat = tree_lib.flatten(params)
  factors = tree_lib.flatten(adapters)
  for path in sorted({p.rsplit('/', 1)[0] for p in factors}):
    if path not in flat:
      raise CheckpointMismatchError(f'LoRA adapter for {path!r}, which the model does not have')
    kernel, a, b = flat[path], factors[path + '/a'], factors[path + '/b']
    if dropout and rng is not None:
      # Drops input features of the update (one mask per step), in weight space.
      keep = jax.random.bernoulli(path_key(rng, path), 1.0 - dropout, a.shape[:-1] + (1,))
      a = jnp.where(keep, a / (1.0 - dropout), 0.0)
    delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST).reshape(kernel.shape)
    flat[path] = kernel + (scale * delta).astype(kernel.dtype)
  return tree_lib.unflatten(flat)


def lora(rank: int, alpha: float | None = None, *, targets: str = r'.*kernel',
         dropout: float = 0.0, head: str | None = 'head/.*', stacked: str | None = None,
         input_axes: InputAxes = ()) -> Transform:
  """Low-rank adapters on the kernels matching `targets`; the base model is frozen.

  `b` starts at zero, so at init the model's outputs are exactly the base
  model's. Only the adapters (and the `head`, if any) train, so the optimizer
  state is a small fraction of full fine-tuning's.

  Args:
    rank: rank r of each update.
    alpha: the update is scaled by `alpha / rank` (default: alpha = rank).
    targets: regex of the kernels to adapt (two or more dimensions).
    dropout: rate at which input features of each update are dropped in
      training; the update is formed in weight space, so one mask per step.
    head: regex of parameters that train whole (a new task head); None for none.
    stacked: regex of kernels stacked over layers on their leading axis (as
      `nn.scan` makes; default: those under `layers/`); each layer gets its
      own adapters.
    input_axes: `(regex, n)` rules: kernels whose path matches have `n` input
      axes (after any stacked one); default: all axes but the last. Flax's
      attention needs `[('.*(query|key|value)/kernel', 1)]`: those kernels are
      `(embed, heads, head_dim)`, while `out/kernel` `(heads, head_dim, embed)`
      fits the default.
  """
  input_axes = [(pattern, int(n)) for pattern, n in input_axes]
  stacked = STACKED_PATHS if stacked is None else stacked
  if rank < 1:
    raise ConfigError(f'LoRA rank must be at least 1, got {rank}')
  scale = (alpha if alpha is not None else rank) / rank

  def init(params, rng):
    if ADAPTERS in params:
      raise ValueError(f'parameters already hold {ADAPTERS!r} adapters; apply lora once')
    flat = tree_lib.flatten(params)
    hits = [p for p in flat if re.fullmatch(targets, p)]
    bad = [p for p in hits if np.ndim(flat[p]) - _lead(p, stacked) < 2]  # not a matrix
    if not hits or bad:
      raise ConfigError(
          f'lora(targets={targets!r}) must match kernels of two or more dimensions; it matches '
          f'{len(hits)} parameter(s)' + (f', {bad[:3]} too small' if bad else '') +
          f'. Parameters are e.g. {sorted(flat)[:6]}')
    adapters = {}
    for path in hits:
      kernel = flat[path]
      a_shape, b_shape = _factor_shapes(path, kernel.shape, rank, stacked, input_axes)
      bound = 1.0 / math.sqrt(a_shape[-2])  # Kaiming-uniform with a = sqrt(5), as in PEFT.
      adapters[path + '/a'] = jax.random.uniform(path_key(rng, path), a_shape, kernel.dtype,
                                                 -bound, bound)
      adapters[path + '/b'] = jnp.zeros(b_shape, kernel.dtype)
    return {**params, ADAPTERS: tree_lib.unflatten(adapters)}

  trainable = trainable_where([(ADAPTERS + '/.*', True)] + ([(head, True)] if head else [])
                              + [('.*', False)], 'lora')

  def wrap_apply(apply_fn):
    def apply(variables, batch, *, train=False, rngs=None):
      params = dict(variables['params'])
      adapters = params.pop(ADAPTERS)
      rng = (rngs or {}).get('dropout') if train else None
      params = _fold(params, adapters, scale=scale, dropout=dropout,
                     rng=None if rng is None else jax.random.fold_in(rng, 0x10AA))
      return apply_fn({**variables, 'params': params}, batch, train=train, rngs=rngs)

    return apply

  return make_transform('lora', init=init, trainable=trainable, wrap_apply=wrap_apply,
                        rank=rank, alpha=alpha if alpha is not None else float(rank),
                        targets=targets, dropout=dropout, head=head, stacked=stacked,
                        input_axes=[list(r) for r in input_axes])


def _lora_spec(transform: Transform | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  specs = transform.spec if isinstance(transform, Transform) else transform
  found = [dict(s) for s in specs if s.get('name') == 'lora']
  if len(found) != 1:
    raise ValueError(f'expected one lora transform in the chain, found {len(found)}')
  return found[0]


def merge(params: Params, transform: Transform | Sequence[Mapping[str, Any]]) -> Params:
  """Folds the adapters into the base kernels: a plain model's parameters.

  Args:
    params: the full tree (e.g. `state.all_params()`), adapters included.
    transform: the chain holding the `lora` transform, or its spec (the
      `finetune` list of a checkpoint manifest).
  """
  spec = _lora_spec(transform)
  base = {k: v for k, v in params.items() if k != ADAPTERS}
  return _fold(base, params[ADAPTERS], scale=spec['alpha'] / spec['rank'])


def export_adapters(directory: str | os.PathLike, params: Params,
                    transform: Transform | Sequence[Mapping[str, Any]]) -> epath.Path:
  """Writes the adapters and the head alone (not the base model) to `directory`.

  Returns:
    The directory, for `load_adapters`.
  """
  spec = _lora_spec(transform)
  head = spec['head']
  flat = tree_lib.flatten(params)
  keep = {p: np.asarray(v) for p, v in flat.items()
          if p.startswith(ADAPTERS + '/') or (head and re.fullmatch(head, p))}
  directory = paths.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  ocp.PyTreeCheckpointer().save(directory / 'params', tree_lib.unflatten(keep), force=True)
  (directory / 'adapters.json').write_text(json.dumps(
      {'lora': {k: v for k, v in spec.items() if k != 'name'}, 'params': sorted(keep)},
      indent=2))
  return directory


def load_adapters(directory: str | os.PathLike) -> Transform:
  """Adds exported adapters (and head) to a base model: `lora` plus their saved values.

  Chain it after the base model's weights, e.g.
  `chain(from_pretrained(base_run), load_adapters(path))`.
  """
  directory = paths.as_path(directory)
  meta_path = directory / 'adapters.json'
  if not meta_path.exists():
    raise MissingFileError(f'no adapters.json in {directory}; pass a directory written by '
                            'finetune.export_adapters')
  meta = json.loads(meta_path.read_text())
  saved = meta['params']

  def read():
    return ocp.PyTreeCheckpointer().restore(directory / 'params')

  select = '|'.join(re.escape(p) for p in saved)
  t = chain(lora(**meta['lora']), from_pretrained(read, select=select, strict=True))
  return t._replace(spec=t.spec[:1] + ({'name': 'load_adapters', 'source': str(directory)},))
