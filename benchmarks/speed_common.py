"""What the speed benchmarks share: timing, memory, the matmul peak, workers, XLA profiles.

`benchmarks/text_speed.py` and `benchmarks/resnet_speed.py` run every
measurement in a fresh process of their own script (`spawn`), time steps run
to completion (`timed_steps`), take the peak RSS above a baseline as memory,
and set their FLOP/s against the CPU's practical peak: a float32 4096 x 4096 by
4096 x 4096 matmul in JAX, NumPy and PyTorch (`matmul_worker`).
"""

import glob
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

MATMUL = 4096
LIBRARIES = ('jax', 'numpy', 'torch')


def rss_mb() -> float:
  """The process's resident set size now, in MiB."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def peak_rss_mb() -> float:
  """The process's peak resident set size, in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.


def reset_peak_rss() -> None:
  """Restarts the peak RSS (Linux's VmHWM, which `ru_maxrss` reads) from the current RSS."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def memory(baseline: float, peak_before_reset: float) -> dict[str, float]:
  """Peak RSS over the whole run and over the timed steps alone, both above `baseline`."""
  return dict(peak_mb=max(peak_before_reset, peak_rss_mb()) - baseline,
              train_peak_mb=peak_rss_mb() - baseline)


def timed(step: Callable[[int], Any], count: int) -> list[float]:
  """Seconds each of `count` calls `step(i)` took."""
  times = []
  for i in range(count):
    start = time.perf_counter()
    step(i)
    times.append(time.perf_counter() - start)
  return times


def timed_steps(step: Callable[[int], Any], warmup: int, steps: int, baseline: float
                ) -> tuple[list[float], list[float], dict[str, float]]:
  """Runs `warmup` then `steps` calls of `step(i)`, the peak RSS restarted in between.

  Returns:
    The seconds of each warm-up call, the seconds of each timed call, and the
    peak memory above `baseline` (see `memory`).
  """
  warm = timed(step, warmup)
  peak = peak_rss_mb()
  reset_peak_rss()
  times = timed(step, steps)
  return warm, times, memory(baseline, peak)


def median_step(results: list[dict[str, Any]]) -> float:
  """The median of the step times of all `results` together."""
  return statistics.median([t for r in results for t in r['times']])


# ---------------------------------------------------------------------------------------------
# Worker processes


def spawn(script: str, args: list[str]) -> dict[str, Any]:
  """Runs `script` as a worker in a fresh process; returns its JSON result (its last line)."""
  out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True,
                       text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def spawn_matmuls(script: str, matmuls: dict[str, list[dict[str, Any]]]) -> None:
  """Adds a measurement per library of `matmuls`, each `script --worker matmul` of its own."""
  for lib in matmuls:
    matmuls[lib].append(spawn(script, ['--worker', 'matmul', '--library', lib]))


def matmul_worker(library: str, repeats: int) -> dict[str, Any]:
  """Seconds per float32 MATMUL^3 matmul, `repeats` times after one warm-up."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((MATMUL, MATMUL), np.float32) for _ in range(2))
  if library == 'jax':
    import jax
    matmul = jax.jit(lambda x, y: x @ y)
    a, b = jax.device_put(a), jax.device_put(b)
    run = lambda _: matmul(a, b).block_until_ready()
  elif library == 'torch':
    import torch
    torch.set_num_threads(os.cpu_count())
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    run = lambda _: torch.mm(a, b)
  else:
    run = lambda _: a @ b
  timed(run, 1)
  return dict(times=timed(run, repeats))


# ---------------------------------------------------------------------------------------------
# Table cells


def matmul_peaks(matmuls: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
  """FLOP/s of each library's matmul, from the median of its timings."""
  return {lib: 2 * MATMUL ** 3 / median_step(ms) for lib, ms in matmuls.items()}


def peak_share(flops: float, peaks: dict[str, float]) -> str:
  """`flops` (per second) as a share of JAX's matmul peak and, in parentheses, of the best."""
  return f'{100 * flops / peaks["jax"]:.0f}% ({100 * flops / max(peaks.values()):.0f}%)'


def compile_cell(results: list[dict[str, Any]]) -> str:
  """The median compile time of `results`, or 'n/a' where there is none."""
  compile_s = [r['compile_s'] for r in results]
  return 'n/a' if compile_s[0] is None else f'{statistics.median(compile_s):.1f} s'


def memory_cell(results: list[dict[str, Any]]) -> str:
  """The largest peak memory of `results` over the run and, in parentheses, the timed steps."""
  return (f"{max(r['peak_mb'] for r in results):,.0f} MB "
          f"({max(r['train_peak_mb'] for r in results):,.0f} MB)")


def machine_lines(matmuls: dict[str, list[dict[str, Any]]]) -> list[str]:
  """The lines under a table that give the matmul peaks and the machine."""
  return ['Matmul peak, float32 4096³ (median of '
          f"{sum(len(m['times']) for m in matmuls['jax'])}): "
          + ', '.join(f'{lib} {p / 1e9:.0f} GFLOP/s' for lib, p in matmul_peaks(matmuls).items())
          + '.',
          f'Machine: {platform.machine()}, {os.cpu_count()} cores.']


# ---------------------------------------------------------------------------------------------
# XLA


def xla_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled JAX program, as XLA counts them."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get('flops', 0.0))


def has_op(text: str, *names: str) -> bool:
  """Whether HLO `text` applies any of the operations `names`."""
  return any(f' {n}(' in f' {text}' for n in names)


def hlo_instructions(hlo: str, *, strip_layouts: bool = False
                     ) -> Iterator[tuple[str, str, str]]:
  """The instructions of an optimised HLO module that run operations (not containers).

  Args:
    hlo: the module's text (`compiled.as_text()`).
    strip_layouts: whether to drop layouts like `{1,0}` from each instruction,
      whose commas would count as dimensions of its shape.

  Yields:
    `(name, instruction, body)`: the instruction's name, what follows its
    `=`, and the text of the computation it calls (a fusion's operations), or
    the instruction itself where it calls none.
  """
  bodies, current = {}, None
  for line in hlo.splitlines():
    if line.rstrip().endswith('{') and not line.startswith(' '):
      current = line.split()[1 if line.startswith('ENTRY') else 0].lstrip('%')
      bodies[current] = []
    elif current and line.startswith(' '):
      bodies[current].append(line)
  for line in (l for body in bodies.values() for l in body):
    name, _, rest = line.strip().removeprefix('ROOT ').partition(' = ')
    if strip_layouts:
      rest = re.sub(r'\{[0-9,]*\}', '', rest)
    called = re.findall(r'calls=%([\w.\-]+)', rest)
    body = ' '.join(bodies.get(called[0], [])) if called else rest
    if not called and has_op(body, 'while', 'call', 'conditional'):
      continue  # Containers: what they run has events of its own.
    yield name.lstrip('%'), rest, body


def profile(run: Callable[[int], Any], steps: int, kinds: dict[str, str], other: str
            ) -> dict[str, float]:
  """Seconds per step by kind of operation, from a `jax.profiler` trace of `steps` steps.

  Args:
    run: runs step `i` to completion.
    steps: how many steps to trace.
    kinds: the kind of each XLA operation, by name.
    other: the kind of the operations `kinds` does not name.

  Returns:
    The seconds per step each kind took, summed over threads, and the wall time
    of a step under 'step (wall time)'.
  """
  import jax
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for i in range(steps):
      run(i)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    trace = jax.profiler.ProfileData.from_file(
        glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0])
    seconds = {'step (wall time)': wall / steps}
    for plane in trace.planes:
      for line in plane.lines:
        if 'XLA' not in line.name:
          continue
        for event in line.events:
          if event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool')):
            continue  # Spans over the operations, not operations.
          kind = kinds.get(event.name, other)
          seconds[kind] = seconds.get(kind, 0.0) + event.duration_ns / 1e9 / steps
  return seconds
