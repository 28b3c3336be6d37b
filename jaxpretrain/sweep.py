"""Hyperparameter sweeps: one run per point of a grid of config values, ranked on validation.

  jaxpretrain sweep --config configs/fashion_mnist_finetune.py --workdir runs/sweep \\
      --sweep 'optimizer.lr=[1e-4,3e-4,1e-3]' --sweep 'optimizer.weight_decay=[0,1e-4]'

Each trial trains in `workdir/trial_NNN` with `loop.train`; `sweep.json` holds
every trial's values and best validation metrics, `sweep.md` and `sweep.png`
compare them. A rerun in the same workdir skips finished trials and resumes the
others; a workdir holding a different sweep is refused.
"""

import functools
import itertools
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from etils import epath
import matplotlib
import ml_collections
import numpy as np

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from jaxpretrain import config as config_lib
from jaxpretrain import loop, paths
from jaxpretrain.errors import ConfigError

Config = ml_collections.ConfigDict
Axis = tuple[str, list]

_FORM = 'key=[value1,value2,...], e.g. optimizer.lr=[1e-4,3e-4,1e-3]'


def _split_items(body: str) -> list[str]:
  """Splits a list's body on its top-level commas (not those inside brackets or quotes)."""
  items, depth, quote, start = [], 0, '', 0
  for i, ch in enumerate(body):
    if quote:
      quote = '' if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      items.append(body[start:i])
      start = i + 1
  return [item.strip() for item in items + [body[start:]]]


def parse_axis(text: str) -> Axis:
  """Parses a `--sweep` argument, `key=[value1,value2,...]`.

  The values stay text here: `run` parses each one as `--config.key=value` would
  be (numbers, tuples, quoted or bare strings), against the config's own types.

  Args:
    text: e.g. `'optimizer.lr=[1e-4,3e-4]'` or `"augment.name=[none,standard]"`.

  Returns:
    The key and its value texts, e.g. `('optimizer.lr', ['1e-4', '3e-4'])`.
  """
  key, sep, body = (part.strip() for part in text.partition('='))
  if not sep or not key:
    raise ConfigError(f'--sweep {text!r} needs the form {_FORM}')
  if not (body.startswith('[') and body.endswith(']')):
    raise ConfigError(f'--sweep {text!r}: the values must be a [...] list; use {_FORM}')
  values = _split_items(body[1:-1])
  if not all(values):
    raise ConfigError(f'--sweep {text!r} has an empty value; use {_FORM}')
  if len(set(values)) < len(values):
    raise ConfigError(f'--sweep {text!r} repeats a value; list each value once')
  return key, values


def _get(config: Config, key: str) -> Any:
  return functools.reduce(lambda node, part: node[part], key.split('.'), config)


def _resolve(config: Config, axes: Sequence[Axis]) -> list[Axis]:
  """The axes' values as the config holds them; any bad key or value fails here, first."""
  keys = [key for key, _ in axes]
  if len(set(keys)) < len(keys):
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    raise ConfigError(f'--sweep names {", ".join(repeated)} more than once; give each key '
                      f'one list of values ({_FORM})')
  return [(key, [_get(config_lib.override(config, [f'{key}={text}']), key) for text in texts])
          for key, texts in axes]


def trials(axes: Sequence[Axis], random: int | None = None, seed: int = 0) -> list[dict]:
  """The trials of a sweep: every point of the grid, or a random budget of them.

  Args:
    axes: `(key, values)` pairs; the grid is their cartesian product, the last
      key varying fastest.
    random: if given, draw this many distinct grid points uniformly; a budget of
      the grid's size or more runs the whole grid.
    seed: seed of the random draw (the same seed draws the same trials).

  Returns:
    One `{key: value}` dict per trial, in grid order.

  Example: `trials([('a', [1, 2]), ('b', ['x', 'y'])])` gives
  `[{'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]`.
  """
  keys = [key for key, _ in axes]
  grid = [dict(zip(keys, point)) for point in itertools.product(*(v for _, v in axes))]
  if random is None or random >= len(grid):
    return grid
  if random < 1:
    raise ConfigError(f'--random {random}: the budget must be a positive number of trials')
  chosen = np.random.default_rng(seed).choice(len(grid), size=random, replace=False)
  return [grid[i] for i in sorted(chosen)]


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value))


def _show(value: Any) -> str:
  return value if isinstance(value, str) else json.dumps(value)


def _assignment_text(assignment: dict[str, Any]) -> str:
  return ', '.join(f'{k}={_show(v)}' for k, v in assignment.items())


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  return {k: v for key, sub in tree.items()
          for k, v in _flat(sub, f'{prefix}.{key}' if prefix else key).items()}


def _identity(sweep: dict[str, Any]) -> dict[str, Any]:
  """What makes two sweeps the same: their kind, axes, trials and shared config."""
  return {'kind': sweep['kind'], 'axes': sweep['axes'], 'config': sweep['config'],
          'trials': [t['assignment'] for t in sweep['trials']]}


def _check_same_sweep(path: epath.Path, sweep: dict[str, Any]) -> None:
  """Refuses a workdir whose `sweep.json` describes another sweep than `sweep`."""
  if not path.exists():
    return
  theirs, ours = _identity(json.loads(path.read_text())), _identity(sweep)
  differ = [k for k in ('kind', 'axes', 'trials') if theirs[k] != ours[k]]
  old, new = _flat(theirs['config']), _flat(ours['config'])
  # Keys only one side has come from another library version, not from this sweep's choices;
  # the parallel mode changes speed, not results.
  keys = sorted(k for k in old.keys() & new.keys()
                if old[k] != new[k] and not k.startswith('parallel.'))
  differ += [f'config ({", ".join(keys)})'] if keys else []
  if differ:
    raise ConfigError(f'{path.parent} holds another sweep (its {"; ".join(differ)} differ), '
                      'whose results would not compare with these. Nothing was changed; use '
                      'a new --workdir, or move that one away.')


def _has_validation(config: Config) -> bool:
  data = config.data
  return bool(data.get('validation_split') or
              (data.get('labelled_per_class') and data.get('validation_per_class')))


def _check_metric(validation: dict[str, float], metric: str, name: str) -> None:
  if metric not in validation:
    raise ConfigError(f'{name} recorded no validation {metric!r}; --metric must be one of: '
                      f'{", ".join(k for k in validation if k != "examples") or "(none)"}')


def _result(summary: dict[str, Any]) -> dict[str, Any]:
  """What `sweep.json` keeps of a trial's `loop.train` summary."""
  return {'best_validation': summary.get('best_validation', {}),
          'best_step': summary['best_step'],
          'best_epoch': summary['best_step'] / summary['steps_per_epoch'],
          'wall_time_s': summary['wall_time_s']}


def _write_json(path: epath.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=1) + '\n')


def best_trial(records: Sequence[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
  """The finished trial with the best validation `metric` ('max' or 'min'); first wins ties."""
  pick = max if mode == 'max' else min
  return pick(records, key=lambda r: r['best_validation'][metric])


def run(config: Config, workdir: paths.PathLike, axes: Sequence[Axis], *,
        kind: str = 'finetune', metric: str = 'accuracy', mode: str = 'max',
        random: int | None = None, seed: int = 0, progress: bool = True,
        command: str = '') -> dict[str, Any]:
  """Trains one run per trial, then writes `sweep.json`, `sweep.md` and `sweep.png`.

  Every key and value is checked against `config` before anything is written.
  Each trial keeps the checkpoint of its best validation step: by the config's
  `checkpoint.best_metric`, or by `metric` if the config names none.

  Args:
    config: the config every trial starts from (fixed overrides applied).
    workdir: the sweep's directory; trial `i` trains in `workdir/trial_{i:03d}`.
    axes: `(key, value texts)` pairs, as `parse_axis` returns them.
    kind: 'finetune' or 'pretrain', passed to `loop.train`.
    metric: validation metric that ranks the trials, e.g. 'accuracy' or 'loss'.
    mode: 'max' or 'min': whether a larger or smaller `metric` is better.
    random: train this many trials drawn from the grid instead of all of it.
    seed: seed of the random draw.
    progress: show each trial's progress bar.
    command: the command line, quoted in the report.

  Returns:
    The paths of the report and `sweep.json`, the best trial, and counts.
  """
  start = time.time()
  if mode not in ('max', 'min'):
    raise ConfigError(f"--mode must be 'max' or 'min', not {mode!r}")
  axes = _resolve(config, axes)
  if not _has_validation(config):
    raise ConfigError('a sweep ranks trials on validation, and this config has no validation '
                      'split; set data.validation_split (or data.validation_per_class)')
  if not config.checkpoint.get('best_metric'):
    config = config_lib.override(config, [f'checkpoint.best_metric={metric!r}'])
  if not config.checkpoint.get('keep_best'):
    config = config_lib.override(config, ['checkpoint.keep_best=1'])
  planned = trials(axes, random=random, seed=seed)
  workdir = paths.as_path(workdir)
  sweep = {'command': command, 'kind': kind, 'metric': metric, 'mode': mode,
           'axes': _jsonable(dict(axes)), 'config': json.loads(config.to_json_best_effort()),
           'trials': [{'name': f'trial_{i:03d}', 'assignment': _jsonable(assignment)}
                      for i, assignment in enumerate(planned)]}
  _check_same_sweep(workdir / 'sweep.json', sweep)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_json(workdir / 'sweep.json', sweep)
  trained = 0
  for i, (record, assignment) in enumerate(zip(sweep['trials'], planned, strict=True)):
    trial_dir, name = workdir / record['name'], record['name']
    saved_path = trial_dir / 'trial.json'
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    if 'result' not in saved:
      logging.info('%s (%d of %d): %s', name, i + 1, len(planned), _assignment_text(assignment))
      trial_dir.mkdir(parents=True, exist_ok=True)
      _write_json(saved_path, record)
      trial_config = config_lib.override(config, [f'{k}={v!r}' for k, v in assignment.items()])
      summary = loop.train(trial_config, trial_dir, kind=kind, progress=progress)
      saved = {**record, 'result': _result(summary)}
      _write_json(saved_path, saved)
      trained += 1
    _check_metric(saved['result']['best_validation'], metric, name)
    record.update(saved['result'])
    _write_json(workdir / 'sweep.json', sweep)
  best = best_trial(sweep['trials'], metric, mode)
  sweep['best'] = best['name']
  _write_json(workdir / 'sweep.json', sweep)
  report = write_report(workdir, sweep)
  return {'report': str(report), 'sweep': str(workdir / 'sweep.json'),
          'best': {**best, 'workdir': str(workdir / best['name'])},
          'trials': len(planned), 'trained': trained, 'wall_time_s': time.time() - start}


def _log_scale(values: Sequence[Any]) -> bool:
  numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  return numbers and min(values) > 0 and max(values) > 10 * min(values)


def plot(sweep: dict[str, Any]) -> matplotlib.figure.Figure:
  """The ranking metric against each swept key's values, one panel a key; best trial starred.

  A key's axis is logarithmic when its values are positive numbers spanning more
  than a factor of 10, and categorical otherwise.
  """
  metric, axes = sweep['metric'], sweep['axes']
  best = next(t for t in sweep['trials'] if t['name'] == sweep['best'])
  fig, subplots = plt.subplots(1, len(axes), figsize=(4.5 * len(axes), 3.8), squeeze=False)
  for ax, (key, values) in zip(subplots[0], axes.items()):
    log = _log_scale(values)
    # Log axes place numbers by value; anything else gets one evenly spaced slot per value.
    x = {t['name']: t['assignment'][key] if log else values.index(t['assignment'][key])
         for t in sweep['trials']}
    ax.scatter(list(x.values()), [t['best_validation'][metric] for t in sweep['trials']],
               label='trial')
    ax.scatter([x[best['name']]], [best['best_validation'][metric]], s=200, marker='*',
               color='C3', label=f'best ({best["name"]})', zorder=3)
    if log:
      ax.set_xscale('log')
    else:
      ax.set_xticks(range(len(values)), [_show(v) for v in values])
      ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set(xlabel=key, ylabel=f'validation {metric}')
  subplots[0][0].legend()
  fig.tight_layout()
  return fig


def write_report(workdir: paths.PathLike, sweep: dict[str, Any]) -> epath.Path:
  """Writes `sweep.md` and `sweep.png` for a finished sweep (`sweep.json`'s contents).

  Returns:
    The path of `sweep.md`.
  """
  workdir = paths.as_path(workdir)
  metric, keys = sweep['metric'], list(sweep['axes'])
  fig = plot(sweep)
  paths.save_figure(fig, workdir / 'sweep.png', dpi=100)
  plt.close(fig)
  names = sorted({k for t in sweep['trials'] for k in t['best_validation']} - {'examples'})
  columns = [metric] + [k for k in names if k != metric]
  best = next(t for t in sweep['trials'] if t['name'] == sweep['best'])
  rows = [f'| {t["name"]}{" **(best)**" if t is best else ""} | '
          + ' | '.join(_show(t['assignment'][k]) for k in keys) + ' | '
          + ' | '.join(f'{t["best_validation"].get(c, float("nan")):.4f}' for c in columns)
          + f' | {t["best_epoch"]:g} | {t["wall_time_s"]:.1f} |' for t in sweep['trials']]
  lines = [
      f'# Sweep over {", ".join(keys)}', '',
      f'{len(sweep["trials"])} trials ({sweep["kind"]}), each scored at its best validation '
      f'epoch; ranked by validation {metric} ({sweep["mode"]}). Best: **{best["name"]}** '
      f'({_assignment_text(best["assignment"])}), {metric} '
      f'{best["best_validation"][metric]:.4f} at epoch {best["best_epoch"]:g}.', '',
      '| trial | ' + ' | '.join(keys + [f'validation {c}' for c in columns])
      + ' | best epoch | wall time (s) |',
      '|---' * (len(keys) + len(columns) + 3) + '|', *rows, '',
      f'![validation {metric} against each swept value](sweep.png)', '',
      *(['## Command', '', '```bash', sweep['command'], '```', ''] if sweep['command'] else []),
      '## Configuration', '', 'Shared by every trial, before its swept values.', '',
      '```json', json.dumps(sweep['config'], indent=1), '```', '']
  path = workdir / 'sweep.md'
  path.write_text('\n'.join(lines))
  return path
