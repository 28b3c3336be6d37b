"""The main job over several seeds: how robust is the gain from pre-training?

  python benchmarks/fashion_mnist_seeds.py --seeds 0 1 2 --workdir runs/seeds

Each seed changes the pre-training and fine-tuning randomness and which 600
training images carry labels. Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import pathlib
import platform

import jax
import numpy as np

from jaxpretrain import config as config_lib
from jaxpretrain import recipe


def main(seeds: list[int], workdir: pathlib.Path, overrides: list[str]) -> str:
  rows, gains = [], []
  for seed in seeds:
    cfg = config_lib.override(config_lib.load('configs/fashion_mnist_recipe.py'), [
        f'pretrain.seed={seed}', f'finetune.seed={seed}', f'finetune.data.subset_seed={seed}',
        *overrides])
    result = recipe.run(cfg, workdir / f'seed={seed}', progress=False)
    ft, sc = result['test']['finetune'], result['test']['scratch']
    gains.append(100 * (ft['accuracy'] - sc['accuracy']))
    rows.append(f'| {seed} | {ft["accuracy"]:.2%} ({ft["run"]}) | {sc["accuracy"]:.2%} '
                f'({sc["run"]}) | {gains[-1]:+.2f} | {result["wall_time_s"]:.0f} |')
  table = '\n'.join([
      '| seed | fine-tuned (chosen run) | from scratch (chosen run) | gain (points) | '
      'wall time (s) |', '|---|---|---|---|---|', *rows,
      f'| mean ± sd | | | {np.mean(gains):+.2f} ± {np.std(gains, ddof=1) if len(gains) > 1 else 0:.2f} | |',
      '', f'Machine: {platform.machine()}, {jax.device_count()} JAX CPU device(s), '
      f'JAX {jax.__version__}.'])
  print(table)
  return table


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('runs/seeds'))
  parser.add_argument('--override', action='append', default=[],
                      help='extra key=value config overrides, e.g. pretrain.train.steps=500')
  args = parser.parse_args()
  main(args.seeds, args.workdir, args.override)
