"""Memory and time of rematerialisation, and compile time of scanned layers: BERT-base MLM.

  python benchmarks/remat_scan.py                  # the figures in BENCHMARKS.md
  python benchmarks/remat_scan.py --batch 1 --seq 128 --steps 1 --rounds 1   # a quick look

Part 1 trains BERT-base as a masked LM on sequences of 512 tokens with each
`remat` setting ('none', 'block', 'dots'), unrolled and scanned, and reports
XLA's temporary buffers for the compiled step
(`compiled.memory_analysis().temp_size_in_bytes`: the activations kept for the
backward pass and the scratch around them) and the median step time. The
settings take turns each round, so that the machine's load falls on all of
them alike. XLA:CPU's default scheduler, which runs independent work
concurrently, moves an unrolled model's recomputation up next to the forward
pass, where it saves nothing; so part 1 runs twice, in processes of their own:
with XLA's default flags and with
`--xla_cpu_enable_concurrency_optimized_scheduler=false`. Schedulers of GPUs
and TPUs order the recomputation for memory.

Part 2 compiles the same training step for 12 and for 24 layers, scanned
(`scan_layers=True`) and unrolled, and reports the seconds of `compile()`
(lowering excluded).

Inputs are token ids drawn at random (a step's cost does not depend on them);
the objective masks 15% of them as BERT does; AdamW updates the parameters.
"""

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

SERIAL_SCHEDULER = '--xla_cpu_enable_concurrency_optimized_scheduler=false'
if '--serial-scheduler' in sys.argv:  # Read once, when JAX creates its CPU client.
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {SERIAL_SCHEDULER}'.strip()

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from jaxpretrain import finetune, models, objectives  # pylint: disable=wrong-import-position
from jaxpretrain.step import make_train_step  # pylint: disable=wrong-import-position

MASK_ID, SPECIAL_IDS = 103, (0, 101, 102)


def cpu_model() -> str:
  """The CPU's model name as `lscpu` gives it."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    return next(l.split(':', 1)[1].strip() for l in out.splitlines() if 'Model name' in l)
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return platform.processor() or 'unknown CPU'


def program(batch: int, seq: int, **fields: Any) -> tuple[Any, Any, Any]:
  """BERT-base MLM's jitted train step, a maker of its state, and a batch.

  `fields` replace those of the `TransformerConfig`.
  """
  cfg = dataclasses.replace(models.PRESETS['bert_base'], pooler=False, **fields)
  model = models.BertForMaskedLM(cfg)
  objective = objectives.masked_lm(mask_id=MASK_ID, vocab_size=cfg.vocab_size,
                                   special_ids=SPECIAL_IDS)
  rng = np.random.default_rng(0)
  data = {'input_ids': rng.integers(1000, cfg.vocab_size, (batch, seq), dtype=np.int32),
          'attention_mask': np.ones((batch, seq), np.int32),
          'token_type_ids': np.zeros((batch, seq), np.int32)}

  def make_state():
    return finetune.create_state(model, finetune.identity(),
                                 tx=optax.adamw(1e-4, weight_decay=0.01),
                                 rng=jax.random.PRNGKey(0), example_batch=data)

  return jax.jit(make_train_step(objective), donate_argnums=0), make_state, data


def compile_seconds(batch: int, seq: int, **fields: Any) -> float:
  """Seconds to compile the step (from its shapes alone)."""
  step, make_state, data = program(batch, seq, **fields)
  lowered = step.lower(jax.eval_shape(make_state), data)
  start = time.perf_counter()
  lowered.compile()
  return time.perf_counter() - start


def remat_table(batch: int, seq: int, steps: int, rounds: int) -> str:
  """Temporary bytes and median step time of each `remat` setting, unrolled and scanned."""
  settings = [(remat, scanned) for scanned in (False, True) for remat in ('none', 'block', 'dots')]
  runs = {}
  for remat, scanned in settings:
    step, make_state, data = program(batch, seq, remat=remat, scan_layers=scanned)
    state = make_state()
    compiled = step.lower(state, data).compile()
    state, metrics = compiled(state, data)  # The first step, untimed.
    jax.block_until_ready(metrics)
    runs[remat, scanned] = dict(compiled=compiled, state=state, data=data, times=[],
                                temp=compiled.memory_analysis().temp_size_in_bytes)
  for _ in range(rounds):
    for key in settings:
      run = runs[key]
      for _ in range(steps):
        start = time.perf_counter()
        run['state'], metrics = run['compiled'](run['state'], run['data'])
        jax.block_until_ready(metrics)
        run['times'].append(time.perf_counter() - start)
  base = runs['none', False]
  base_time = statistics.median(base['times'])
  lines = ['| layers | remat | XLA temporary MiB | of unrolled none | step s (median) | '
           'of unrolled none |', '|---|---|---:|---:|---:|---:|']
  for remat, scanned in settings:
    run = runs[remat, scanned]
    t = statistics.median(run['times'])
    lines.append(f'| {"scanned" if scanned else "unrolled"} | {remat} | '
                 f'{run["temp"] / 2**20:,.0f} | {run["temp"] / base["temp"]:.2f} | '
                 f'{t:.2f} | {t / base_time:.2f} |')
  return '\n'.join(lines)


def compile_table(batch: int, seq: int) -> str:
  """Compile seconds of 12 and 24 layers, scanned and unrolled."""
  lines = ['| layers | 12 layers s | 24 layers s | 24 / 12 |', '|---|---:|---:|---:|']
  for scanned in (True, False):
    twelve = compile_seconds(batch, seq, num_layers=12, scan_layers=scanned)
    twenty_four = compile_seconds(batch, seq, num_layers=24, scan_layers=scanned)
    lines.append(f'| {"scanned" if scanned else "unrolled"} | {twelve:.1f} | {twenty_four:.1f} | '
                 f'{twenty_four / twelve:.2f} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=2, help='sequences per step')
  parser.add_argument('--seq', type=int, default=512, help='tokens per sequence')
  parser.add_argument('--steps', type=int, default=2, help='timed steps per setting per round')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--part', choices=('remat', 'compile'), help='run one part, here')
  parser.add_argument('--serial-scheduler', action='store_true',
                      help=f'set XLA_FLAGS={SERIAL_SCHEDULER}')
  args = parser.parse_args()
  if args.part == 'remat':
    print(remat_table(args.batch, args.seq, args.steps, args.rounds), flush=True)
    return
  if args.part == 'compile':
    print(compile_table(args.batch, args.seq), flush=True)
    return
  print(f'BERT-base MLM, batch {args.batch} x {args.seq} tokens, float32; {cpu_model()}, '
        f'jax {jax.__version__}\n', flush=True)
  common = [sys.executable, __file__, '--batch', str(args.batch), '--seq', str(args.seq),
            '--steps', str(args.steps), '--rounds', str(args.rounds)]
  for title, extra in (('XLA:CPU default flags', []), (SERIAL_SCHEDULER, ['--serial-scheduler'])):
    print(f'Rematerialisation, {title}:\n', flush=True)
    subprocess.run([*common, '--part', 'remat', *extra], check=True)
    print(flush=True)
  print('Compile time, XLA:CPU default flags:\n', flush=True)
  subprocess.run([*common, '--part', 'compile'], check=True)


if __name__ == '__main__':
  main()
