"""Parameter surgery: grafting pre-trained weights and re-initialising parameters."""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import logging
import re
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError
from jaxpretrain.finetune.base import Params, Transform, make_transform
from jaxpretrain.finetune.masks import trainable_where
from jaxpretrain.finetune.reshape import Adapter, adapter
from jaxpretrain.models import memory

Source = str | Mapping[str, Any] | Callable[[], Mapping[str, Any]]
# `(regex, adapter)` or `(regex, adapter name)` or `(regex, adapter name, {kwargs})`.
ReshapeRule = tuple[str, str | Adapter] | tuple[str, str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class GraftReport:
  """What `graft` did, by `/`-joined parameter path."""
  loaded: tuple[str, ...]
  missing: tuple[str, ...]      # selected in the model, absent from the checkpoint: kept at init
  unexpected: tuple[str, ...]   # selected in the checkpoint, absent from the model: unused
  reshaped: tuple[str, ...] = ()  # loaded through a shape adapter, as 'path: old → new'

  def __str__(self) -> str:
    lines = [f'loaded {len(self.loaded)} (reshaped {len(self.reshaped)}), missing '
             f'{len(self.missing)}, unexpected {len(self.unexpected)} parameter(s)']
    lines += [f'  reshaped: {p}' for p in self.reshaped]
    lines += [f'  missing (left at init): {p}' for p in self.missing]
    lines += [f'  unexpected (unused): {p}' for p in self.unexpected]
    return '\n'.join(lines)


def _rename(path: str, rename: Sequence[tuple[str, str]]) -> str:
  for pattern, replacement in rename:
    if re.fullmatch(pattern, path):
      return re.sub(pattern, replacement, path)
  return path


def _adapters(rules: Sequence[ReshapeRule]) -> list[tuple[re.Pattern, Adapter]]:
  return [(re.compile(r[0]), adapter(r[1], **(dict(r[2]) if len(r) > 2 else {})))
          for r in rules]


def graft(params: Params, pretrained: Mapping[str, Any], *, select: str = '.*',
          rename: Sequence[tuple[str, str]] = (), strict: bool = False,
          reshape: Sequence[ReshapeRule] = (), require: bool = True
          ) -> tuple[Params, GraftReport]:
  """Copies pre-trained parameters into a model's parameter tree.

  Args:
    params: the new model's parameters (at init).
    pretrained: a parameter tree (e.g. restored from a checkpoint).
    select: regex over `/`-joined paths; only matching parameters are grafted.
    rename: `(regex, replacement)` rules mapping checkpoint paths to model
      paths; the first full match wins, e.g. `[('backbone/(.*)', r'encoder/\\1')]`.
    strict: raise if any selected parameter is missing or unexpected.
    reshape: `(regex, adapter)` rules for parameters whose shapes differ, e.g.
      `[('embed/embedding', 'resize_vocab')]` (see `finetune.reshape`); the
      first rule matching the model path applies.
    require: raise if nothing at all is loaded (a `select` or `rename` that
      matches nothing is almost always a mistake).

  Returns:
    The new parameters and a `GraftReport`.

  Raises:
    CheckpointMismatchError: on a shape mismatch no reshape rule covers, or in
      strict mode.
  """
  regex = re.compile(select)
  adapters = _adapters(reshape)
  source = tree_lib.unflatten({_rename(p, rename): v
                               for p, v in tree_lib.flatten(pretrained).items()})
  # Scanned and unrolled layers hold the same weights: read either into either.
  source = tree_lib.flatten(memory.like(source, params))
  source = {p: v for p, v in source.items() if regex.fullmatch(p)}
  flat = tree_lib.flatten(params)
  loaded, missing, reshaped = [], [], []
  for path, leaf in flat.items():
    if not regex.fullmatch(path):
      continue
    if path not in source:
      missing.append(path)
      continue
    value, old_shape, new_shape = source[path], tuple(np.shape(source[path])), np.shape(leaf)
    if old_shape != tuple(new_shape):
      fit = next((a for r, a in adapters if r.fullmatch(path)), None)
      if fit is None:
        raise CheckpointMismatchError(
            f'parameter {path!r} has shape {old_shape} in the checkpoint but {new_shape} in '
            'the model; build the model with the pre-trained configuration, give a reshape '
            "rule (e.g. reshape=[(path, 'resize_vocab')]), or leave this parameter out of "
            '`select` (e.g. start a new_head).')
      value = fit(jnp.asarray(value), leaf)
      reshaped.append(f'{path}: {old_shape} → {tuple(new_shape)}')
    flat[path] = jnp.asarray(value, dtype=leaf.dtype)
    loaded.append(path)
  unexpected = sorted(p for p in source if p not in flat)
  report = GraftReport(tuple(loaded), tuple(missing), tuple(unexpected), tuple(reshaped))
  if strict and (missing or unexpected):
    raise CheckpointMismatchError(f'strict from_pretrained: {report}\nrename or select the '
                                  'parameters so that the two trees agree, or pass strict=False.')
  if require and not loaded:
    raise CheckpointMismatchError(
        f'from_pretrained loaded no parameter (select={select!r}); the checkpoint holds '
        f'e.g. {sorted(tree_lib.flatten(pretrained))[:5]}, the model '
        f'{sorted(tree_lib.flatten(params))[:5]}: fix `select` or `rename`.')
  return tree_lib.unflatten(flat), report


def read_source(source: Source, step: int | str | None = None) -> Mapping[str, Any]:
  """The parameter tree a source names.

  Args:
    source: a run's work directory (its checkpoint at `step`), a Hugging Face
      model directory (a `config.json` and no `checkpoints/`), a parameter tree,
      or a function returning one.
    step: checkpoint step of a work directory: an int, 'best' or 'latest'.
  """
  from jaxpretrain import checkpoint, convert  # Imported here: only needed for paths.
  if isinstance(source, str) and convert.is_hf_directory(source):
    return convert.hf_params(source)
  if isinstance(source, str):
    return checkpoint.restore_params(source, step=step)
  return source() if callable(source) else source


def read_model_state(source: Source, step: int | str | None = None) -> Mapping[str, Any]:
  """The model state (collections such as `batch_stats`) a source names; empty for a tree."""
  from jaxpretrain import checkpoint, convert  # Imported here: only needed for paths.
  if isinstance(source, str) and convert.is_hf_directory(source):
    return {k: v for k, v in convert.hf_variables(source).items() if k != 'params'}
  if isinstance(source, str):
    return checkpoint.restore_model_state(source, step=step)
  return {}


def graft_model_state(model_state: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                      select: str = '.*', rename: Sequence[tuple[str, str]] = ()
                      ) -> dict[str, Any]:
  """Copies pre-trained model state, collection by collection, where `select` matches.

  BatchNorm statistics belong to the weights they normalise: an encoder grafted
  without them would run its eval mode on the statistics of its initialisation.
  Entries the checkpoint lacks keep their initial values.
  """
  grafted = dict(model_state)
  for name, tree in model_state.items():
    if name in pretrained and tree_lib.flatten(tree):
      grafted[name], report = graft(tree, pretrained[name], select=select, rename=rename,
                                    require=False)
      logging.info('from_pretrained %s: %s', name, report)
  return grafted


def _source_spec(source: Source) -> str:
  """A source as the manifest names it: its path, or `<params>` for a tree or function."""
  return source if isinstance(source, str) else '<params>'


def from_pretrained(source: Source, *, select: str = '.*',
                    rename: Sequence[tuple[str, str]] = (), strict: bool = False,
                    step: int | str | None = None, reshape: Sequence[ReshapeRule] = ()
                    ) -> Transform:
  """Grafts parameters from a checkpoint (or a parameter tree) into the model.

  The model state selected alongside (BatchNorm statistics) comes from the
  checkpoint too; a parameter tree carries none.

  Args:
    source: a checkpoint directory written by `jaxpretrain.checkpoint`, a
      Hugging Face model directory (a `config.json` and no `checkpoints/`; see
      `convert.hf_params`), a parameter tree, or a function returning one.
    select: regex over `/`-joined paths of the parameters to graft.
    rename: `(regex, replacement)` rules from checkpoint paths to model paths.
    strict: missing or unexpected parameters are an error.
    step: checkpoint step to load: an int, 'best' (by the run's validation
      metric) or 'latest' (default).
    reshape: shape adapters by regex, e.g. `[('.*pos_embedding',
      'interpolate_positions', {'prefix_tokens': 1, 'grid': True})]`.
  """

  def init(params, rng):
    params, report = graft(params, read_source(source, step), select=select, rename=rename,
                           strict=strict, reshape=reshape)
    logging.info('from_pretrained: %s', report)
    return params

  def init_state(model_state):
    if not model_state:
      return model_state
    return graft_model_state(model_state, read_model_state(source, step), select=select,
                             rename=rename)

  return make_transform('from_pretrained', init=init, init_state=init_state,
                        source=_source_spec(source),
                        select=select, rename=[list(r) for r in rename], strict=strict,
                        step=step, reshape=[_rule_spec(r) for r in reshape])


def _rule_spec(rule: ReshapeRule) -> list[Any]:
  """A reshape rule as JSON: adapter functions by their name."""
  fn = rule[1]
  if isinstance(fn, functools.partial):  # The library's adapters: name and arguments.
    return [rule[0], fn.func.__name__.lstrip('_'), dict(fn.keywords)]
  name = fn if isinstance(fn, str) else getattr(fn, '__name__', type(fn).__name__)
  return [rule[0], name, *[dict(r) for r in rule[2:]]]


def path_key(rng: jax.Array, path: str) -> jax.Array:
  """A key for one parameter, the same whatever the chain around it."""
  return jax.random.fold_in(rng, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def fresh_value(path: str, leaf: jax.Array, rng: jax.Array) -> jax.Array:
  """A newly initialised value for a parameter, chosen by its name.

  Kernels get LeCun-normal initialisation (fan-in: all but the last dimension),
  embeddings N(0, 0.02), scales ones, and everything else (biases) zeros.
  """
  name = path.rsplit('/', 1)[-1]
  shape, dtype = jnp.shape(leaf), leaf.dtype
  if name == 'kernel':
    return jax.nn.initializers.lecun_normal()(rng, shape, dtype)
  if name == 'embedding':
    return 0.02 * jax.random.normal(rng, shape, dtype)
  if name == 'scale':
    return jnp.ones(shape, dtype)
  return jnp.zeros(shape, dtype)


def reinit(pattern: str) -> Transform:
  """Re-initialises the parameters whose path fully matches `pattern`."""

  def init(params, rng):
    regex = re.compile(pattern)
    flat = tree_lib.flatten(params)
    hits = [p for p in flat if regex.fullmatch(p)]
    if not hits:
      raise ValueError(f'reinit({pattern!r}) matches no parameter; parameters are '
                       f'e.g. {sorted(flat)[:5]}')
    for p in hits:
      flat[p] = fresh_value(p, flat[p], path_key(rng, p))
    return tree_lib.unflatten(flat)

  return make_transform('reinit', init=init, pattern=pattern)


def new_head(pattern: str = 'head/.*') -> Transform:
  """Starts the task head afresh (re-initialised and trainable)."""
  t = reinit(pattern)
  return t._replace(spec=({'name': 'new_head', 'pattern': pattern},))


def read_variables(source: Source, step: int | str | None = None) -> dict[str, Any]:
  """A source's parameters and its non-empty model state: `{'params': ..., 'batch_stats': ...}`."""
  from jaxpretrain import convert  # Imported here: only needed for paths.
  if isinstance(source, str) and convert.is_hf_directory(source):
    variables = dict(convert.hf_variables(source))  # One conversion for every collection.
  else:
    variables = {'params': read_source(source, step), **read_model_state(source, step)}
  return {name: tree for name, tree in variables.items() if jax.tree.leaves(tree)}


def with_teacher(source: Source, *, step: int | str | None = None,
                 key: str = 'teacher') -> Transform:
  """Adds a frozen teacher's parameters under `key` (for `objectives.distillation`).

  The teacher then lives in the train state's frozen parameters: placed and
  sharded with the student's, never updated, with no optimizer state. A
  teacher with model state (BatchNorm statistics) keeps it, frozen too, under
  `key + '_state'`: it predicts in inference mode, on those statistics.

  Args:
    source: as for `from_pretrained`: a run's work directory, a Hugging Face
      model directory, a parameter tree, or a function returning one.
    step: checkpoint step of a work directory: an int, 'best' or 'latest'.
    key: top-level key of the teacher's subtree.
  """
  state_key = key + '_state'

  def init(params, rng):
    for taken in (key, state_key):
      if taken in params:
        raise ValueError(f'parameters already hold a {taken!r} subtree')
    variables = jax.tree.map(jnp.asarray, read_variables(source, step))
    state = {name: tree for name, tree in variables.items() if name != 'params'}
    return {**params, key: variables['params'], **({state_key: state} if state else {})}

  frozen = f'({re.escape(key)}|{re.escape(state_key)})/.*'
  trainable = trainable_where([(frozen, False), ('.*', True)], 'with_teacher')
  return make_transform('with_teacher', init=init, trainable=trainable,
                        source=_source_spec(source), step=step)
