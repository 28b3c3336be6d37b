"""`jaxpretrain pretrain|finetune|evaluate|recipe|sweep|prepare` from the command line.

  jaxpretrain pretrain --config configs/fashion_mnist_pretrain.py \\
      --config.optimizer.lr=3e-4 --workdir runs/pretrain
  jaxpretrain sweep --config configs/fashion_mnist_finetune.py --workdir runs/sweep \\
      --sweep 'optimizer.lr=[1e-4,3e-4,1e-3]' --random 2
  jaxpretrain evaluate --protocol linear_probe --config configs/fashion_mnist_finetune.py \\
      --config.finetune.pretrained=runs/pretrain --workdir runs/transfer
"""

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence

from jaxpretrain import config as config_lib
from jaxpretrain.errors import JaxpretrainError


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.key=value` (or `--config.key value`) from the other arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      body = arg[len('--config.'):]
      if '=' not in body:
        if i + 1 >= len(argv):
          raise config_lib.ConfigError(f'{arg} needs a value')
        body, i = f'{body}={argv[i + 1]}', i + 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


# The protocols of `jaxpretrain.transfer`, and the options each takes, named here so that
# argument checks run before the heavy imports.
_PROTOCOLS = ('linear_probe', 'knn', 'few_shot', 'finetune', 'lora')
# Option → (its protocol, the protocol's keyword argument).
_PROTOCOL_OPTIONS = {'k': ('knn', 'k'), 'shots': ('few_shot', 'shots'),
                     'seeds': ('few_shot', 'seeds'), 'lora_rank': ('lora', 'rank')}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='jaxpretrain', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='command', required=True)
  for name, help_text in [('pretrain', 'pre-train a model (resumes in an existing workdir)'),
                          ('finetune', 'fine-tune a model (resumes in an existing workdir)'),
                          ('evaluate', "score a run's checkpoint on a split"),
                          ('recipe', 'run a whole pre-train → fine-tune recipe with a report'),
                          ('sweep', 'train a grid of config values, compared on validation')]:
    s = sub.add_parser(name, help=help_text)
    s.add_argument('--config', required=True, help='config file, optionally with :variant')
    s.add_argument('--workdir', required=True, help='where checkpoints, logs and reports go')
    s.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    if name == 'evaluate':
      s.add_argument('--split', default='test')
      s.add_argument('--step', default='best',
                     help="an int, 'latest' or 'best' (the run's checkpoint; without --protocol)")
      s.add_argument('--protocol', choices=_PROTOCOLS, default=None,
                     help="transfer evaluation of the config's pre-trained encoder "
                          '(finetune.pretrained) instead of scoring a checkpoint of --workdir')
      s.add_argument('--k', type=int, nargs='+', default=None,
                     help='knn: neighbours (default 20); several are chosen among on validation')
      s.add_argument('--shots', type=int, nargs='+', default=None,
                     help='few_shot: labelled images per class (default 1 5 10)')
      s.add_argument('--seeds', type=int, default=None,
                     help='few_shot: draws of the n-shot images averaged over (default 5)')
      s.add_argument('--lora-rank', type=int, default=None,
                     help="lora: adapter rank (default the config's finetune.lora.rank, else 8)")
    if name == 'sweep':
      s.add_argument('--sweep', action='append', required=True, metavar='KEY=[V1,V2,...]',
                     help='a config key and the values to try; repeat for a grid over several')
      s.add_argument('--random', type=int, default=None, metavar='N',
                     help='train N distinct trials drawn from the grid instead of all of it')
      s.add_argument('--seed', type=int, default=0, help='seed of the --random draw')
      s.add_argument('--kind', choices=('finetune', 'pretrain'), default='finetune')
      s.add_argument('--metric', default='accuracy', help='validation metric ranking the trials')
      s.add_argument('--mode', choices=('max', 'min'), default='max',
                     help='whether a larger or smaller --metric is better')
  prep = sub.add_parser('prepare', help='prepare a dataset for offline use')
  prep.add_argument('dataset')
  prep.add_argument('--data-dir', default=None)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the `jaxpretrain` command."""
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  # Orbax and TFDS log routine events (e.g. opening checkpoints read-only) as warnings.
  for noisy in ('absl', 'jax._src', 'orbax'):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = _split_overrides(argv)
    parser = _parser()
    args = parser.parse_args(rest)
    if args.command == 'evaluate':
      for option, (protocol, _) in _PROTOCOL_OPTIONS.items():
        if getattr(args, option) is not None and args.protocol != protocol:
          parser.error(f"--{option.replace('_', '-')} needs --protocol {protocol}")
    return _run(args, overrides, argv)
  except JaxpretrainError as e:
    print(f'jaxpretrain: error: {e}', file=sys.stderr)
    return 2


def _run(args: argparse.Namespace, overrides: list[str], argv: list[str]) -> int:
  from jaxpretrain import devices, loop, recipe  # Heavy imports after argument checks.
  if args.command == 'prepare':
    from jaxpretrain import data
    builder = data.prepared_builder(args.dataset, data_dir=args.data_dir)
    print(f'{args.dataset} prepared in {builder.data_dir}')
    return 0
  config = config_lib.override(config_lib.load(args.config), overrides)
  devices.log_summary()
  progress = not args.no_progress
  if args.command in ('pretrain', 'finetune'):
    result = loop.train(config, args.workdir, kind=args.command, progress=progress)
  elif args.command == 'evaluate' and args.protocol:
    from jaxpretrain import transfer
    options = {name: getattr(args, option) for option, (_, name) in _PROTOCOL_OPTIONS.items()
               if getattr(args, option) is not None}
    result = transfer.run(config, args.workdir, args.protocol, split=args.split,
                          progress=progress, **options)
  elif args.command == 'evaluate':
    step = int(args.step) if args.step.isdigit() else args.step
    result = loop.evaluate(config, args.workdir, split=args.split, step=step)
  elif args.command == 'sweep':
    from jaxpretrain import sweep
    result = sweep.run(config, args.workdir, [sweep.parse_axis(a) for a in args.sweep],
                       kind=args.kind, metric=args.metric, mode=args.mode, random=args.random,
                       seed=args.seed, progress=progress,
                       command=shlex.join(['jaxpretrain', *argv]))
  else:
    result = recipe.run(config, args.workdir, progress=progress)
  print(json.dumps(result, indent=2, default=str))
  return 0


if __name__ == '__main__':
  sys.exit(main())
