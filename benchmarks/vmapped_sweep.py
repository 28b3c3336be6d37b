"""A learning-rate sweep run trial after trial against all trials in one vmapped program.

  python benchmarks/vmapped_sweep.py --k 4 --steps 40 --batch 16 48 --encoders tiny default \
      --ways full probe

Fine-tunes the Fashion-MNIST classifier of `configs/fashion_mnist_finetune.py`
(on its 480 labelled training images, with its augmentation, new head at 10x
and AdamW schedule) at K learning rates spread geometrically over 0.1x-10x the
config's; `full` trains everything, `probe` the head on the frozen encoder (the
vmapped run shares the encoder and the randomness between trials, so the
augmentation and the encoder run once for all of them). Three ways:

  (a) the K trials one after another, each with its own optimizer and jitted
      step, as a sweep of separate runs does;
  (b) the K trials stacked and trained by `jaxpretrain.vmap_sweep.vmap_step`;
  (c) the K trials one after another through one compiled step, their learning
      rates set with `vmap_sweep.set_lr_scales`.

All see the same batches, already on the device, from the same initial state.
Compile time is measured on its own (ahead-of-time `lower().compile()`); run time
is the median over repeats, the three sweeps taking turns within each repeat.
Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import build, config as config_lib, data, finetune
from jaxpretrain.state import TrainState
from jaxpretrain.step import make_train_step
from jaxpretrain.vmap_sweep import (num_trials, scaled, set_lr_scales, trial_states, unstack,
                                    vmap_step)

CONFIG = 'configs/fashion_mnist_finetune.py'
COMMON = 'configs/fashion_mnist_common.py'


def _batches(cfg: config_lib.Config, batch_size: int, steps: int) -> list[dict[str, jax.Array]]:
  """The fine-tuning config's labelled images, in the first `steps` shuffled batches."""
  train = data.in_memory_source(cfg.data.name, cfg.data.train_split)
  labelled, _ = data.labelled_subset(train, cfg.data.labelled_per_class, cfg.data.subset_seed,
                                     cfg.data.validation_per_class)
  loader = data.train_loader(data.subset(train, labelled), batch_size=batch_size, seed=cfg.seed)
  return [jax.device_put(next(loader)) for _ in range(steps)]


def _compile(step: Callable, state: TrainState, batch: Any) -> tuple[Callable, float]:
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def _run(programs: list[tuple[Callable, TrainState]], batches: list
         ) -> tuple[list[TrainState], list[float], float]:
  """Runs each program over all batches, one after another, from copies of its state.

  Returns the trials' final states and losses (a stacked state gives K of each) and
  the wall time of the steps.
  """
  # The steps donate their state, so each run starts from a fresh copy.
  starts = jax.block_until_ready([jax.tree.map(jnp.copy, s) for _, s in programs])
  finals, losses = [], []
  start = time.perf_counter()
  for (compiled, _), state in zip(programs, starts):
    for b in batches:
      state, metrics = compiled(state, b)
    jax.block_until_ready((state, metrics))
    finals.append(state)
    losses.append(metrics['loss'])
  elapsed = time.perf_counter() - start
  if jnp.ndim(finals[0].step):  # One stacked state of K trials.
    finals = [unstack(finals[0], k) for k in range(num_trials(finals[0]))]
  return finals, [float(x) for x in jnp.ravel(jnp.asarray(losses))], elapsed


def _gap(a: list[Any], b: list[Any]) -> float:
  return max(float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def measure(encoder: str, batch_size: int, k: int, steps: int, repeats: int, way: str = 'full'
            ) -> list[dict[str, Any]]:
  """Times three sweeps over the same K learning rates; one result per sweep."""
  stages = config_lib.import_file(COMMON).encoder(encoder)['stages']
  probe = way == 'probe'
  cfg = config_lib.override(config_lib.load(CONFIG), [f'model.encoder.stages={stages}',
                                                      f'finetune.linear_probe={probe}'])
  batches = _batches(cfg, batch_size, steps)
  model, transform = build.model(cfg.model), build.transform(cfg.finetune)
  step = make_train_step(build.objective(cfg.objective, cfg.augment))
  scales = np.geomspace(0.1, 10.0, k)
  rng = jax.random.PRNGKey(cfg.seed)

  def create(tx, rng):
    return finetune.create_state(model, transform, tx=tx, rng=rng, example_batch=batches[0])

  # The first compilation in a process pays one-off costs that no sweep should carry.
  _compile(step, create(build.optimizer(cfg.optimizer, steps), rng), batches[0])
  # (a) A separate optimizer per trial, its learning rate a compile-time constant.
  programs_a, compile_a = [], 0.0
  for c in scales:
    lr_cfg = config_lib.override(cfg, [f'optimizer.lr={cfg.optimizer.lr * c}'])
    state = create(build.optimizer(lr_cfg.optimizer, steps), rng)
    compiled, seconds = _compile(step, state, batches[0])
    programs_a.append((compiled, state))
    compile_a += seconds
  # (b) One optimizer whose learning-rate factor is data, the K trials stacked. A probe's
  # trials share the frozen encoder and the randomness (one seed), so they run it once.
  shared = ('frozen', 'rng') if probe else ()
  scaled_tx = scaled(build.optimizer(cfg.optimizer, steps))
  states = trial_states(lambda rng: create(scaled_tx, rng), seeds=cfg.seed, lr_scales=scales,
                        shared=shared)
  vmapped, compile_b = _compile(vmap_step(step, shared=shared), states, batches[0])
  # (c) That optimizer without vmap: one compiled step runs the K trials in turn.
  state = create(scaled_tx, rng)
  shared, compile_c = _compile(step, state, batches[0])
  sweeps = {f'(a) {k} runs, a step compiled per run': (programs_a, compile_a),
            '(b) one vmapped run': ([(vmapped, states)], compile_b),
            f'(c) {k} runs sharing one `scaled` step': (
                [(shared, set_lr_scales(state, c)) for c in scales], compile_c)}

  for programs, _ in sweeps.values():  # Warm-up: each executable's first call is slower.
    _run(programs, batches[:1])
  times = {name: [] for name in sweeps}
  for _ in range(repeats):
    results = {}
    for name, (programs, _) in sweeps.items():
      *results[name], elapsed = _run(programs, batches)
      times[name].append(elapsed)
  finals_a, losses_a = results[next(iter(sweeps))]
  params = sum(x.size for x in jax.tree.leaves(finals_a[0].params))
  rows = []
  for name, (_, compile_s) in sweeps.items():
    finals, losses = results[name]
    run_s = statistics.median(times[name])
    rows.append(dict(encoder=f'{encoder}, {way} ({params:,} trained)', batch=batch_size,
                     sweep=name,
                     compile_s=compile_s, run_s=run_s,
                     images_per_s=k * steps * batch_size / run_s, losses=losses,
                     loss_gap=_gap(losses, losses_a),
                     params_gap=_gap([s.params for s in finals], [s.params for s in finals_a])))
  for row in rows:
    row['total_s'] = row['compile_s'] + row['run_s']
    row['run_ratio'] = rows[0]['run_s'] / row['run_s']
    row['total_ratio'] = rows[0]['total_s'] / row['total_s']
  return rows


def table(rows: list[dict[str, Any]], k: int, steps: int, repeats: int) -> str:
  lines = [
      f'| encoder, way (parameters) | batch | sweep of K={k} learning rates, {steps} steps each | '
      'compile | run (median) | speed-up of run | speed-up of compile + run | final losses | '
      'max \\|Δ\\| to (a): loss, params |',
      '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['encoder']} | {r['batch']} | {r['sweep']} | {r['compile_s']:.1f} s | "
        f"{r['run_s']:.2f} s ({r['images_per_s']:,.0f} img/s) | {r['run_ratio']:.2f}× | "
        f"{r['total_ratio']:.2f}× | {' '.join(f'{x:.3f}' for x in r['losses'])} | "
        f"{r['loss_gap']:.0e}, {r['params_gap']:.0e} |")
  lines += ['', f'Run: median of {repeats} repeats. Machine: {platform.machine()}, '
            f'{jax.device_count()} JAX CPU device(s), JAX {jax.__version__}.']
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--k', type=int, default=4, help='number of learning rates (trials)')
  parser.add_argument('--steps', type=int, default=40, help='train steps per trial')
  parser.add_argument('--batch', type=int, nargs='+', default=[16, 48], help='batch size(s)')
  parser.add_argument('--encoders', nargs='+', default=['tiny', 'default'],
                      choices=['tiny', 'default'],
                      help="variants of fashion_mnist_common's encoder")
  parser.add_argument('--ways', nargs='+', default=['full'], choices=['full', 'probe'],
                      help='train everything, or a linear probe on the frozen encoder')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  rows = [row for w in args.ways for e in args.encoders for b in args.batch
          for row in measure(e, b, args.k, args.steps, args.repeats, w)]
  print(table(rows, args.k, args.steps, args.repeats))


if __name__ == '__main__':
  main()
