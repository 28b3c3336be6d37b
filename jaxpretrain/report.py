"""`report.md` and learning-curve plots for a recipe's work directory."""

import html
import json
import platform
from typing import Any

from etils import epath
import jax
import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from jaxpretrain import paths
from jaxpretrain.loop import read_metrics


def plot_curves(workdir: epath.Path, runs: dict[epath.Path, str], path: epath.Path,
                pretraining: dict[epath.Path, str] | None = None) -> None:
  """Plots pre-training loss and, per run directory, validation accuracy per epoch.

  Args:
    workdir: the recipe's work directory.
    runs: fine-tuning run directory → its label.
    path: where the PNG goes.
    pretraining: pre-training run directory → its label; by default `workdir/pretrain`.
  """
  fig, (ax_pre, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  pretraining = pretraining or {workdir / 'pretrain': 'pre-training'}
  for run_dir, label in pretraining.items():
    pre = [r for r in read_metrics(run_dir) if r['split'] == 'train']
    ax_pre.plot([r['epoch'] for r in pre], [r['loss'] for r in pre], label=label)
  ax_pre.set(title='pre-training loss (no labels)', xlabel='epoch', ylabel='loss')
  if len(pretraining) > 1:
    ax_pre.legend()
  for run_dir, label in runs.items():
    records = read_metrics(run_dir)
    steps_per_epoch = next((r['step'] / r['epoch'] for r in records if r.get('epoch')), 1.0)
    val = [r for r in records if r['split'] == 'validation']
    # Markers keep a run evaluated only once visible.
    ax_val.plot([r['step'] / steps_per_epoch for r in val], [r['accuracy'] for r in val],
                marker='.', label=label)
  ax_val.set(title='validation accuracy while fine-tuning', xlabel='epoch', ylabel='accuracy')
  ax_val.legend()
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)
  plt.close(fig)


def _trial_rows(trials: dict[str, dict[str, Any]], chosen: str) -> list[str]:
  return [f'| {name}{" (chosen)" if name == chosen else ""} | '
          f'{t["best_validation"]["accuracy"]:.2%} | {t["best_validation"]["loss"]:.4f} | '
          f'{t["best_step"] / t["steps_per_epoch"]:.0f} |' for name, t in trials.items()]


def _budget(config: Any, units: str) -> str:
  """What both classifiers learn from and share, in the config's own words."""
  ftc = config.finetune
  data = ftc.data
  per_class = data.get('labelled_per_class', 0)
  if per_class and data.get('validation_per_class', 0):
    labelled = (f'Labelled data: {per_class} training + {data.validation_per_class} validation '
                f'{units} per class')
  else:  # Validated on a split of its own, as `loop` does then.
    which = f'{per_class} training {units} per class' if per_class else f'the {units}'
    labelled = (f'Labelled data: {which} of the `{data.train_split}` split, with those of '
                f'`{data.validation_split}` to choose on')
  length = (f'{ftc.train.steps} steps' if ftc.train.get('steps', 0)
            else f'{ftc.train.epochs} epochs')
  return (f'{labelled}; both classifiers train {length} with the same '
          f'{config.get("shared", "architecture and optimizer")}, and each picks its learning '
          'rate and epoch by validation accuracy alone; only the chosen model is scored on the '
          f'test {units}.')


def _lm_section(config: Any, lm: dict[str, Any]) -> list[str]:
  """Perplexity table and generated sample of the recipe's language model."""
  cfg, gen, sample = config.lm, config.generate, lm['sample']
  rows = [f'| {name} (`{lm["splits"][name]}`) | {lm[name]["perplexity"]:.2f} | '
          f'{lm[name]["loss"]:.4f} | {int(lm[name]["tokens"]):,} |'
          for name in ('validation', 'test')]
  top_k = f', top-k {gen.top_k}' if gen.top_k else ''
  return [
      '## Language model', '',
      f'A `{cfg.model.transformer.preset}` decoder pre-trained by `{cfg.objective.name}` on the '
      f'`{cfg.data.train_split}` split of `{cfg.data.name}` for {lm["steps"]} steps, with its '
      f'own {cfg.data.tokenizer.kind} tokenizer; the checkpoint of lowest validation loss (step '
      f'{lm["best_step"]}) is scored. Perplexity is the exponential of the mean negative '
      'log-likelihood per predicted token over the whole split.', '',
      '| split | perplexity | NLL per token | predicted tokens |', '|---|---|---|---|', *rows, '',
      f'A sample: the prompt (in bold, {sample["prompt_tokens"]} tokens) and '
      f'{sample["new_tokens"]} generated tokens (temperature {gen.temperature:g}{top_k}, '
      f'seed {gen.seed}).', '',
      f'<pre><b>{html.escape(sample["prompt"])}</b>{html.escape(sample["continuation"])}</pre>',
      '']


def write(workdir: epath.Path, config: Any, results: dict[str, dict[str, Any]],
          trials: dict[str, dict[str, dict[str, Any]]], timings: dict[str, float],
          wall_time_s: float, lm: dict[str, Any] | None = None) -> epath.Path:
  """Writes `report.md` and `curves.png` into `workdir`; returns the report's path.

  The wording about the data comes from the config: `units` (what a test
  example is, e.g. 'images') and `shared` (what both classifiers have in common).
  `lm`, the language model's scores and sample, adds its section and curve.
  """
  ft, sc = results['finetune'], results['scratch']
  pretraining = {workdir / 'pretrain': f'{config.pretrain.objective.name} (pretrain)'}
  if lm is not None:
    pretraining[paths.as_path(lm['workdir'])] = f'{config.lm.objective.name} (lm)'
  plot_curves(workdir, {paths.as_path(ft['workdir']): 'fine-tuned from pre-training',
                        paths.as_path(sc['workdir']): 'from scratch'}, workdir / 'curves.png',
              pretraining)
  units = config.get('units', 'examples')
  lines = [
      f'# {config.get("title", "Pre-train → fine-tune")}', '',
      f'{config.get("description", "")}', '',
      '| classifier | test accuracy | test macro-F1 | test loss | epoch chosen on validation |',
      '|---|---|---|---|---|',
      f'| fine-tuned from pre-training | {ft["accuracy"]:.2%} | {ft["macro_f1"]:.4f} | '
      f'{ft["loss"]:.4f} | {ft["best_epoch"]:.0f} |',
      f'| from scratch (same budget) | {sc["accuracy"]:.2%} | {sc["macro_f1"]:.4f} | '
      f'{sc["loss"]:.4f} | {sc["best_epoch"]:.0f} |', '',
      f'Gain from pre-training: **{100 * (ft["accuracy"] - sc["accuracy"]):+.2f} accuracy '
      f'points** and **{ft["macro_f1"] - sc["macro_f1"]:+.4f} macro-F1** on '
      f'{int(ft["examples"])} test {units}.', '',
      _budget(config, units), '',
      *([f'Before fine-tuning, the pre-trained classifier fits a new head on the frozen encoder '
         f'for {config.probe.epochs} epochs (linear probe, no augmentation), then trains '
         'everything (LP-FT); the scratch classifier has nothing to probe.', '']
        if config.get('probe', {}).get('epochs', 0) else []),
      '| run | best validation accuracy | its validation loss | at epoch |', '|---|---|---|---|',
      *_trial_rows(trials['finetune'], ft['run']), *_trial_rows(trials['scratch'], sc['run']),
      '', '![learning curves](curves.png)', '',
      *(_lm_section(config, lm) if lm is not None else []),
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
