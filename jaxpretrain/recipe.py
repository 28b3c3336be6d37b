"""A whole pre-train → fine-tune recipe, with a from-scratch baseline and a report.

The recipe config has two run configs, `pretrain` and `finetune`, and a
learning-rate grid for each classifier. The fine-tuned classifier starts from
the pre-training checkpoint, optionally after a linear probe (`probe.epochs` > 0:
a new head trained on the frozen encoder, then everything fine-tuned, as in
LP-FT); the baseline is the same fine-tuning config with no pre-trained weights
and no fine-tuning transforms: same architecture, augmentation and epochs. Each classifier's learning rate and epoch are chosen
on the validation split alone; only the chosen model is scored on the test split.
"""

import pathlib
import time
from typing import Any

import ml_collections

from jaxpretrain import loop, report

Config = ml_collections.ConfigDict


def _probe_config(config: Config, pretrain_dir: pathlib.Path) -> Config:
  """Linear probe: a new head trained on the frozen pre-trained encoder, no augmentation."""
  probe = config.finetune.copy_and_resolve_references()
  probe.finetune.pretrained = str(pretrain_dir)
  probe.finetune.new_head = 'head/.*'
  probe.finetune.freeze = 'encoder/.*'
  probe.finetune.lr_multipliers = ()
  probe.augment = ml_collections.ConfigDict({'name': 'none'})
  probe.optimizer.lr = config.probe.lr
  probe.optimizer.weight_decay = config.probe.weight_decay
  probe.optimizer.schedule = 'constant'
  probe.optimizer.warmup_steps = 0
  probe.train.epochs = config.probe.epochs
  return probe


def _classifier_configs(config: Config, start_dir: pathlib.Path, probed: bool
                        ) -> dict[str, Config]:
  finetuned = config.finetune.copy_and_resolve_references()
  finetuned.finetune.pretrained = str(start_dir)
  if probed:
    # LP-FT (Kumar et al., 2022): start from the probed head and train all of it together.
    finetuned.finetune.select = '.*'
    finetuned.finetune.new_head = ''
    finetuned.finetune.lr_multipliers = ()
  scratch = config.finetune.copy_and_resolve_references()
  for key, default in scratch.finetune.items():
    if key not in ('select', 'step', 'strict'):
      scratch.finetune[key] = type(default)()
  return {'finetune': finetuned, 'scratch': scratch}


def _choose(trials: dict[str, dict[str, Any]]) -> str:
  """The trial with the best validation accuracy; lower validation loss breaks ties."""
  return max(trials, key=lambda t: (trials[t]['best_validation']['accuracy'],
                                    -trials[t]['best_validation']['loss']))


def run(config: Config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict[str, Any]:
  """Runs pre-training, both classifiers' learning-rate grids, and writes `report.md`.

  Each run resumes (or is skipped if finished) when rerun in the same workdir.
  """
  start = time.time()
  workdir = pathlib.Path(workdir).expanduser().absolute()
  timings = {}
  t0 = time.time()
  loop.train(config.pretrain, workdir / 'pretrain', kind='pretrain', progress=progress)
  timings['pretrain'] = time.time() - t0
  start_dir, probed = workdir / 'pretrain', config.get('probe', {}).get('epochs', 0) > 0
  if probed:
    t0 = time.time()
    start_dir = workdir / 'probe'
    loop.train(_probe_config(config, workdir / 'pretrain'), start_dir, kind='finetune',
               progress=progress)
    timings['linear probe'] = time.time() - t0
  grids = {'finetune': config.finetune_lrs, 'scratch': config.scratch_lrs}
  results, trials = {}, {}
  for name, cfg in _classifier_configs(config, start_dir, probed).items():
    t0 = time.time()
    runs = {}
    for lr in grids[name]:
      trial = cfg.copy_and_resolve_references()
      trial.optimizer.lr = lr
      runs[f'{name}/lr={lr:g}'] = (trial, loop.train(trial, workdir / name / f'lr={lr:g}',
                                                      kind='finetune', progress=progress))
    trials[name] = {k: summary for k, (_, summary) in runs.items()}
    chosen = _choose(trials[name])
    trial, summary = runs[chosen]
    results[name] = loop.evaluate(trial, summary['workdir'], split=config.test_split,
                                  step='best')
    results[name].update(run=chosen, workdir=summary['workdir'],
                         best_epoch=summary['best_step'] / summary['steps_per_epoch'],
                         validation_accuracy=summary['best_validation']['accuracy'])
    timings[name] = time.time() - t0
  wall = time.time() - start
  path = report.write(workdir, config, results, trials, timings, wall)
  return {'report': str(path), 'test': results, 'wall_time_s': wall, 'timings_s': timings}
