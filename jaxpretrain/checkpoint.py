"""Orbax checkpoints: train state, data-iterator position and a JSON manifest per step.

A work directory's `checkpoints/` holds one folder per saved step, each with
three items: `state` (the `TrainState` pytree), `data` (the data iterator's
position, so a resumed run continues exactly) and `manifest` (JSON: config,
model, objective, fine-tuning chain, step, metrics, library version).
"""

from collections.abc import Mapping
import contextlib
import json
import logging
import os
import time
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxpretrain import ema, paths
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError, MissingFileError

VERSION = '0.1.0'
StepSpec = int | str | None


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tree_lib.key_path_str(p): tuple(getattr(x, 'shape', np.shape(x)))
          for p, x in leaves}


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  return {'state': ocp.PyTreeCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
          'manifest': ocp.JsonCheckpointHandler()}


def checkpoint_dir(path: str | os.PathLike) -> epath.Path:
  """The checkpoint folder of a work directory (or the folder itself), local or a URI."""
  path = paths.checkpoint_path(path)
  return path / 'checkpoints' if (path / 'checkpoints').is_dir() else path


@contextlib.contextmanager
def _quiet_absl(quiet: bool):
  """Raises absl's log threshold to errors inside the block (if `quiet`)."""
  logger = logging.getLogger('absl')
  level = logger.level
  if quiet:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class Checkpointer:
  """Saves and restores a run's checkpoints with an Orbax `CheckpointManager`.

  Saves are asynchronous and happen every `save_every` steps (or when forced);
  the last `keep_last` checkpoints and the best `keep_best` by `best_metric`
  are kept.

  Args:
    directory: the checkpoint folder (created if absent, unless `read_only`), a
      local path or a URI that Orbax handles (gs://), which it is given unresolved.
    save_every: save when `step % save_every == 0`.
    keep_last: number of most recent checkpoints kept.
    keep_best: number of best checkpoints kept (needs `best_metric`).
    best_metric: name of the metric in `save(metrics=...)` that ranks checkpoints.
    best_mode: 'max' or 'min'.
    manifest: JSON-able description of the run, written with every checkpoint.
    run_identity: JSON-able fields that must match those of checkpoints already
      in `directory` (e.g. model and objective), so another run's checkpoints
      are never mixed with this one's.
    async_save: write in a background thread while training goes on.
    read_only: open existing checkpoints for reading only.
  """

  def __init__(self, directory: str | os.PathLike, *, save_every: int = 1000,
               keep_last: int = 2, keep_best: int = 0, best_metric: str | None = None,
               best_mode: str = 'max', manifest: Mapping[str, Any] | None = None,
               run_identity: Mapping[str, Any] | None = None, async_save: bool = True,
               read_only: bool = False):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', not {best_mode!r}")
    if keep_best and not best_metric:
      raise ValueError('keep_best needs best_metric, the metric that ranks checkpoints')
    self.directory = paths.checkpoint_path(directory)
    self.best_metric, self.best_mode = best_metric, best_mode
    self.manifest = dict(manifest or {})
    self.run_identity = json.loads(json.dumps(run_identity or {}))
    policies = [checkpoint_managers.LatestN(keep_last)]
    if keep_best:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == 'min', n=keep_best,
          keep_checkpoints_without_metrics=False))
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(
          save_decision_policy=checkpoint_managers.FixedIntervalPolicy(save_every),
          enable_async_checkpointing=async_save,
          preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
    with _quiet_absl(read_only):  # Orbax warns that a read-only folder is read-only.
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_handlers=_item_handlers())
    if read_only and self.latest_step() is not None and not best_metric:
      saved = self.read_manifest()
      self.best_metric, self.best_mode = saved.get('best_metric'), saved.get('best_mode', 'max')
    self._check_identity()

  def _check_identity(self) -> None:
    step = self.latest_step()
    if step is None or not self.run_identity:
      return
    theirs = self.read_manifest(step).get('run_identity', {})
    diff = {k: (theirs.get(k), v) for k, v in self.run_identity.items() if theirs.get(k) != v}
    if diff:
      details = '; '.join(f'{k}: saved {a!r}, now {b!r}' for k, (a, b) in diff.items())
      raise CheckpointMismatchError(
          f'{self.directory} holds checkpoints of another run ({details}). Nothing was '
          'changed there; use a new --workdir for this run, or move those checkpoints away.')

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric` (the latest if there is no metric)."""
    scored = [(m[self.best_metric], s) for s in self.all_steps()
              if self.best_metric in (m := self.read_manifest(s).get('metrics', {}))]
    if not scored:
      return self.latest_step()
    return (max if self.best_mode == 'max' else min)(scored)[1]

  def resolve(self, step: StepSpec) -> int:
    """An int step from an int, 'latest' (or None) or 'best'."""
    saved = self.all_steps()
    if not saved:
      raise MissingFileError(f'{self.directory} holds no checkpoint yet; train a run there '
                             'first, or pass the work directory of one that saved some')
    resolved = {None: self.latest_step, 'latest': self.latest_step,
                'best': self.best_step}.get(step, lambda: step)()
    if resolved is None or resolved not in saved:
      raise MissingFileError(f'no checkpoint {step or "at all"} in {self.directory}; '
                             f'saved steps: {saved}')
    return int(resolved)

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, state: Any, *, data_state: Any = None,
           metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
    """Saves asynchronously if the step is due (or `force`); returns whether it saved."""
    step = int(jax.device_get(state.step))
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    manifest = {**self.manifest, 'run_identity': self.run_identity, 'step': step,
                'best_metric': self.best_metric, 'best_mode': self.best_mode,
                'metrics': metrics, 'library_version': VERSION, 'time': time.time()}
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                              data=ocp.args.JsonSave({'state': data_state}),
                              manifest=ocp.args.JsonSave(json.loads(json.dumps(manifest))))
    return self._manager.save(step, args=args, metrics=metrics or None, force=force)

  def read_manifest(self, step: StepSpec = None) -> dict[str, Any]:
    step = self.resolve(step)
    path = self.directory / str(step) / 'manifest' / 'metadata'
    if path.exists():
      return json.loads(path.read_text())
    return self._manager.restore(step, args=ocp.args.Composite(
        manifest=ocp.args.JsonRestore()))['manifest']

  def saved_arrays(self, step: StepSpec = None) -> dict[str, Any]:
    """A checkpoint's train state as array metadata (shape, dtype) by '/'-joined path."""
    meta = self._manager.item_metadata(self.resolve(step))['state']
    return {tree_lib.key_path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}

  def has(self, path: str, step: StepSpec = None) -> bool:
    """Whether a checkpoint's train state holds anything at `path`, e.g. 'extra/ema'."""
    return any(p == path or p.startswith(path + '/') for p in self.saved_arrays(step))

  def restore(self, target: Any, *, step: StepSpec = None) -> tuple[Any, Any]:
    """Restores the state into `target`'s structure, shardings and types.

    The saved arrays are whole, so `target` may shard them over any mesh: each
    device reads only its shards (`parallel.abstract_state` gives such a
    target, e.g. FSDP on 4 devices for a state saved on 8).

    Args:
      target: a train state (or abstract one) of the model being resumed.
      step: an int, 'latest' (default) or 'best'.

    Returns:
      `(state, data_state)`; `data_state` is what was saved with the state.

    Raises:
      CheckpointMismatchError: when a saved array's shape differs from the target's.
    """
    step = self.resolve(step)
    saved = {p: tuple(m.shape) for p, m in self.saved_arrays(step).items()}
    wanted = _shapes(target)
    bad = [(p, saved[p], s) for p, s in wanted.items() if p in saved and saved[p] != s]
    missing = sorted(set(wanted) - set(saved))
    if bad or missing:
      lines = [f'  {p}: checkpoint {a}, model {b}' for p, a, b in bad[:10]]
      lines += [f'  {p}: not in the checkpoint' for p in missing[:10]]
      raise CheckpointMismatchError(
          f'checkpoint {self.directory / str(step)} does not fit this model:\n'
          + '\n'.join(lines) + '\nRestore it into the model configuration it was saved '
          'with, or start this run in a new work directory. Nothing was changed on disk.')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
        data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']['state']

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_checkpoints(path: str | os.PathLike) -> Checkpointer:
  """Opens a work directory's (or a checkpoint folder's) checkpoints read-only."""
  directory = checkpoint_dir(path)
  if not directory.is_dir():
    raise MissingFileError(f'no checkpoint folder at {directory}; pass the work directory '
                            'of a run (it holds checkpoints/).')
  return Checkpointer(directory, read_only=True)


def _restore_parts(reader: Checkpointer, parts: tuple[str, ...], step: int) -> dict[str, Any]:
  """The named subtrees of a checkpoint's train state (those it has), as numpy.

  A part is a path into the state, e.g. 'params' or 'extra/ema'; the result maps
  each part found to its subtree.
  """
  found = {p: jax.ShapeDtypeStruct(m.shape, m.dtype) for p, m in reader.saved_arrays(step).items()
           if any(p.startswith(part + '/') for part in parts)}
  if not found:
    return {}
  wanted = tree_lib.unflatten(found)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = tree_lib.flatten(reader._manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                   partial_restore=True)))['state'])
  result = {}
  for part in parts:
    sub = {p[len(part) + 1:]: v for p, v in restored.items() if p.startswith(part + '/')}
    if sub:
      result[part] = tree_lib.unflatten(sub)
  return result


def restore_params(path: str | os.PathLike, *, step: StepSpec = None) -> dict[str, Any]:
  """Loads only the parameters (trainable and frozen, merged) of a checkpoint.

  Optimizer state and everything else stay on disk. A run that kept an average
  of its parameters (`train.ema_decay`, `jaxpretrain.ema`) gives the average, and
  its raw trainable parameters stay on disk too.

  Args:
    path: a work directory or its `checkpoints/` folder.
    step: an int, 'latest' (default) or 'best'.
  """
  with open_checkpoints(path) as reader:
    step = reader.resolve(step)
    trainable = ema.PATH if reader.has(ema.PATH, step) else 'params'
    return tree_lib.merge(*_restore_parts(reader, (trainable, 'frozen'), step).values())


def restore_model_state(path: str | os.PathLike, *, step: StepSpec = None) -> dict[str, Any]:
  """Loads only the model state of a checkpoint: collections such as `batch_stats`.

  Empty for models without one.

  Args:
    path: a work directory or its `checkpoints/` folder.
    step: an int, 'latest' (default) or 'best'.
  """
  with open_checkpoints(path) as reader:
    return _restore_parts(reader, ('model_state',), reader.resolve(step)).get('model_state', {})


def read_manifest(path: str | os.PathLike, step: StepSpec = None) -> dict[str, Any]:
  """The JSON manifest of a checkpoint in a work directory."""
  reader = open_checkpoints(path)
  try:
    return reader.read_manifest(step)
  finally:
    reader.close()
