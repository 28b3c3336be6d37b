"""Fashion-MNIST at 1% and 10% labels: scratch against autoencoder, SimCLR and MAE pre-training.

  python benchmarks/fashion_mnist_transfer.py --workdir runs/transfer

Pre-trains one encoder family three ways on the 60,000 unlabelled training
images (`configs/fashion_mnist_transfer.py`: the same steps for each), then
evaluates every start, and a randomly initialised encoder, by linear probe on
frozen features and by full fine-tuning at each label budget. Every protocol
chooses its hyper-parameter or epoch on held-out validation images and scores
the chosen model once on the 10,000 test images. Writes `transfer.md` (the
table) and `transfer.json` into the work directory; reruns resume.
"""

import argparse
import json
import pathlib
import platform

import jax

from jaxpretrain import config as config_lib
from jaxpretrain import loop
from jaxpretrain import transfer


def _pretrain(config, workdir: pathlib.Path, progress: bool) -> dict:
  """Each pre-training of the config, run (or resumed) for its step budget.

  Wall time adds up over the processes that ran it (`wall_time.json` in its run).
  """
  runs = {}
  for folder, name, pretrain_config in config.pretrainings:
    run_dir = workdir / 'pretrain' / folder
    cfg = config_lib.override(pretrain_config, [f'train.steps={config.pretrain_steps}'])
    summary = loop.train(cfg, run_dir, kind='pretrain', progress=progress)
    clock = run_dir / 'wall_time.json'
    spent = json.loads(clock.read_text())['seconds'] if clock.exists() else 0.0
    spent += summary['wall_time_s']
    clock.write_text(json.dumps({'seconds': spent}) + '\n')
    runs[folder] = {'name': name, 'run': str(run_dir), 'wall_time_s': spent,
                    'images': config.pretrain_steps * cfg.data.batch_size,
                    'validation': summary.get('best_validation')}
  return runs


def _starts(config, runs: dict) -> list[tuple[str, str, tuple[str, ...]]]:
  """(folder, name, fine-tuning overrides) of scratch and of every pre-trained encoder."""
  starts = [('scratch', 'from scratch', (f'optimizer.lr={config.scratch_lr}',))]
  for folder, run in runs.items():
    starts.append((folder, run['name'], (f'finetune.pretrained={run["run"]}',
                                         f'optimizer.lr={config.pretrained_lr}')))
  return starts


def _cell(result: dict | None) -> str:
  if result is None:
    return 'not yet run'
  return f'{result["accuracy"]:.2%} (F1 {result["macro_f1"]:.3f})'


def _table(config, results: dict, runs: dict) -> str:
  """The Markdown table of the results so far, and the pre-training budget."""
  columns = [(b, p) for b, _ in config.budgets for p in config.protocols]
  header = ['start'] + [f'{p.replace("_", " ")}, {b} labels' for b, p in columns]
  lines = ['| ' + ' | '.join(header) + ' |', '|---|' + '---:|' * len(columns)]
  for name, cells in results.items():
    lines.append(f'| {name} | ' + ' | '.join(_cell(cells.get(c)) for c in columns) + ' |')
  budget = [f'{run["name"]}: {config.pretrain_steps} steps, {run["images"]:,} images '
            f'({run["images"] / 60000:.1f} epochs), {run["wall_time_s"] / 60:.1f} min'
            for run in runs.values()]
  return '\n'.join(lines + ['', 'Pre-training budget: ' + '; '.join(budget) + '.',
                            f'Machine: {platform.machine()}, {jax.device_count()} JAX CPU '
                            f'device(s), JAX {jax.__version__}.'])


def _write(config_spec: str, workdir: pathlib.Path, table: str, results: dict, runs: dict):
  rows = {name: {f'{b} {p}': r for (b, p), r in cells.items()} for name, cells in results.items()}
  (workdir / 'transfer.json').write_text(json.dumps(
      {'pretraining': runs, 'results': rows}, indent=2, default=str) + '\n')
  (workdir / 'transfer.md').write_text(f'# Fashion-MNIST transfer ({config_spec})\n\n'
                                       f'{table}\n')


def main(config_spec: str, workdir: pathlib.Path, progress: bool) -> str:
  config = config_lib.load(config_spec)
  workdir = workdir.expanduser().absolute()
  runs = _pretrain(config, workdir, progress)
  starts = _starts(config, runs)
  results = {name: {} for _, name, _ in starts}
  # Column by column, cheapest first, so that a stopped run has whole columns to show.
  for budget, budget_overrides in config.budgets:
    for protocol in config.protocols:
      for folder, name, start_overrides in starts:
        cfg = config_lib.override(config.finetune, tuple(budget_overrides) + start_overrides)
        run_dir = workdir / f'labels_{budget.rstrip("%")}pct' / folder
        results[name][budget, protocol] = transfer.run(cfg, run_dir, protocol,
                                                       split=config.test_split,
                                                       progress=progress)
        _write(config_spec, workdir, _table(config, results, runs), results, runs)
  table = _table(config, results, runs)
  print(table)
  return table


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/fashion_mnist_transfer.py')
  parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('runs/transfer'))
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args()
  main(args.config, args.workdir, not args.no_progress)
