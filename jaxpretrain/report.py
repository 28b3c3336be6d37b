"""`report.md` and learning-curve plots for a recipe's work directory."""

import json
import pathlib
import platform
from typing import Any

import jax
import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from jaxpretrain.loop import read_metrics


def plot_curves(workdir: pathlib.Path, runs: dict[str, str], path: pathlib.Path) -> None:
  """Plots pre-training loss and, per run directory, validation accuracy per epoch."""
  fig, (ax_pre, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  pre = [r for r in read_metrics(workdir / 'pretrain') if r['split'] == 'train']
  ax_pre.plot([r['epoch'] for r in pre], [r['loss'] for r in pre])
  ax_pre.set(title='pre-training loss (no labels)', xlabel='epoch', ylabel='loss')
  for run_dir, label in runs.items():
    records = read_metrics(run_dir)
    steps_per_epoch = next((r['step'] / r['epoch'] for r in records if r.get('epoch')), 1.0)
    val = [r for r in records if r['split'] == 'validation']
    ax_val.plot([r['step'] / steps_per_epoch for r in val], [r['accuracy'] for r in val],
                label=label)
  ax_val.set(title='validation accuracy while fine-tuning', xlabel='epoch', ylabel='accuracy')
  ax_val.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _trial_rows(trials: dict[str, dict[str, Any]], chosen: str) -> list[str]:
  return [f'| {name}{" (chosen)" if name == chosen else ""} | '
          f'{t["best_validation"]["accuracy"]:.2%} | {t["best_validation"]["loss"]:.4f} | '
          f'{t["best_step"] / t["steps_per_epoch"]:.0f} |' for name, t in trials.items()]


def write(workdir: pathlib.Path, config: Any, results: dict[str, dict[str, Any]],
          trials: dict[str, dict[str, dict[str, Any]]], timings: dict[str, float],
          wall_time_s: float) -> pathlib.Path:
  """Writes `report.md` and `curves.png` into `workdir`; returns the report's path."""
  ft, sc = results['finetune'], results['scratch']
  plot_curves(workdir, {pathlib.Path(ft['workdir']): 'fine-tuned from pre-training',
                        pathlib.Path(sc['workdir']): 'from scratch'}, workdir / 'curves.png')
  ftc = config.finetune
  lines = [
      f'# {config.get("title", "Pre-train → fine-tune")}', '',
      f'{config.get("description", "")}', '',
      '| classifier | test accuracy | test loss | epoch chosen on validation |',
      '|---|---|---|---|',
      f'| fine-tuned from pre-training | {ft["accuracy"]:.2%} | {ft["loss"]:.4f} | '
      f'{ft["best_epoch"]:.0f} |',
      f'| from scratch (same budget) | {sc["accuracy"]:.2%} | {sc["loss"]:.4f} | '
      f'{sc["best_epoch"]:.0f} |', '',
      f'Gain from pre-training: **{100 * (ft["accuracy"] - sc["accuracy"]):+.2f} accuracy '
      f'points** on {int(ft["examples"])} test images.', '',
      f'Labelled data: {ftc.data.labelled_per_class} training + '
      f'{ftc.data.validation_per_class} validation images per class; both classifiers train '
      f'{ftc.train.epochs} epochs with the same architecture, augmentation and optimizer, and '
      'each picks its learning rate and epoch by validation accuracy alone; only the chosen '
      'model is scored on the test images.', '',
      *([f'Before fine-tuning, the pre-trained classifier fits a new head on the frozen encoder '
         f'for {config.probe.epochs} epochs (linear probe, no augmentation), then trains '
         'everything (LP-FT); the scratch classifier has nothing to probe.', '']
        if config.get('probe', {}).get('epochs', 0) else []),
      '| run | best validation accuracy | its validation loss | at epoch |', '|---|---|---|---|',
      *_trial_rows(trials['finetune'], ft['run']), *_trial_rows(trials['scratch'], sc['run']),
      '', '![learning curves](curves.png)', '',
      '## Wall time', '',
      '| stage | seconds |', '|---|---|',
      *[f'| {k} | {v:.1f} |' for k, v in timings.items()],
      f'| **total** | **{wall_time_s:.1f}** |', '',
      f'Machine: {platform.machine()}, {platform.processor() or "cpu"}, '
      f'{jax.device_count()} JAX device(s) ({jax.default_backend()}), '
      f'JAX {jax.__version__}.', '',
      '## Configuration', '', '```json',
      json.dumps(json.loads(config.to_json_best_effort()), indent=1), '```', '']
  path = workdir / 'report.md'
  path.write_text('\n'.join(lines))
  return path
