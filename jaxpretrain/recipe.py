"""A whole pre-train → fine-tune recipe, with a from-scratch baseline and a report.

The recipe config has two run configs: `pretrain` and `finetune`. The
fine-tuning run starts from the pre-training checkpoint; the baseline is the
same fine-tuning config with no pre-trained weights (same architecture,
augmentation, epochs and model selection on the validation split).
"""

import pathlib
import time
from typing import Any

import ml_collections

from jaxpretrain import loop, report

Config = ml_collections.ConfigDict


def run(config: Config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict[str, Any]:
  """Runs pre-training, fine-tuning and the scratch baseline; writes `report.md`.

  Each stage resumes (or is skipped if finished) when rerun in the same workdir.
  """
  start = time.time()
  workdir = pathlib.Path(workdir).expanduser().absolute()
  stages: dict[str, Config] = {'pretrain': config.pretrain}
  finetuned = config.finetune.copy_and_resolve_references()
  finetuned.finetune.pretrained = str(workdir / 'pretrain')
  stages['finetune'] = finetuned
  scratch = config.finetune.copy_and_resolve_references()
  scratch.finetune.pretrained = ''
  scratch.finetune.new_head = ''
  scratch.finetune.freeze = ''
  stages['scratch'] = scratch
  summaries, timings = {}, {}
  for name, cfg in stages.items():
    t0 = time.time()
    summaries[name] = loop.train(cfg, workdir / name,
                                 kind='pretrain' if name == 'pretrain' else 'finetune',
                                 progress=progress)
    timings[name] = time.time() - t0
  results = {}
  for name in ('finetune', 'scratch'):
    t0 = time.time()
    results[name] = loop.evaluate(stages[name], workdir / name, split=config.test_split,
                                  step='best')
    results[name]['best_step'] = summaries[name]['best_step']
    results[name]['best_epoch'] = summaries[name]['best_step'] / summaries[name][
        'steps_per_epoch']
    timings[f'evaluate {name}'] = time.time() - t0
  wall = time.time() - start
  path = report.write(workdir, config, results, timings, wall)
  return {'report': str(path), 'test': results, 'wall_time_s': wall, 'timings_s': timings}
