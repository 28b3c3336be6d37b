"""The Fashion-MNIST pre-trained encoder fine-tuned four ways at 1% and 10% of the labels.

  python examples/finetune_four_ways.py --workdir runs/four_ways
  python examples/finetune_four_ways.py --workdir runs/four_ways --pretrained runs/fashion_mnist/pretrain

Ways: linear probe, full fine-tuning, LoRA, and full fine-tuning with layer-wise
learning-rate decay, plus the same classifier from scratch. Each run picks its
epoch on a held-out validation split; the table gives test accuracy and the
number of trainable parameters, and is written to `four_ways.md`. Reruns resume.
"""

import argparse
import pathlib

from jaxpretrain import config as config_lib
from jaxpretrain import loop


def _run(base, overrides, workdir, test_split, progress):
  config = config_lib.override(base, overrides)
  summary = loop.train(config, workdir, kind='finetune', progress=progress)
  test = loop.evaluate(config, workdir, split=test_split, step='best')
  return test['accuracy'], summary['trainable_params']


def main(config_spec: str, workdir: str, pretrained: str | None, progress: bool) -> str:
  config = config_lib.load(config_spec)
  root = pathlib.Path(workdir).expanduser().absolute()
  if pretrained is None:
    pretrained = root / 'pretrain'
    loop.train(config.pretrain, pretrained, kind='pretrain', progress=progress)
  start = (f'finetune.pretrained={pathlib.Path(pretrained).absolute()}',)
  ways = [(folder, name, start + tuple(o)) for folder, name, o in config.ways]
  ways.append(tuple(config.scratch))
  budgets = [budget for budget, _ in config.budgets]
  results = {name: {} for _, name, _ in ways}
  for budget, budget_overrides in config.budgets:
    for folder, name, overrides in ways:
      run_dir = root / f'labels_{budget.rstrip("%")}pct' / folder
      results[name][budget] = _run(config.finetune, tuple(budget_overrides) + tuple(overrides),
                                   run_dir, config.test_split, progress)
  lines = ['| way | trainable parameters | ' + ' | '.join(
      f'test accuracy, {b} labels' for b in budgets) + ' |', '|---|---:|' + '---:|' * len(budgets)]
  for name, by_budget in results.items():
    lines.append(f'| {name} | {by_budget[budgets[0]][1]:,} | ' + ' | '.join(
        f'{by_budget[b][0]:.2%}' for b in budgets) + ' |')
  table = '\n'.join(lines)
  (root / 'four_ways.md').write_text(
      f'# Fine-tuning four ways\n\nPre-trained encoder: `{pretrained}`; test split '
      f'`{config.test_split}`.\n\n{table}\n')
  print(table)
  return table


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/fashion_mnist_four_ways.py')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--pretrained', default=None,
                      help='work directory of a pre-training run (default: pre-train here)')
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args()
  main(args.config, args.workdir, args.pretrained, not args.no_progress)
