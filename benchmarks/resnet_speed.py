"""Training throughput of a small-stem ResNet-18 on Fashion-MNIST: JAX against PyTorch.

  python benchmarks/resnet_speed.py --rounds 2 --steps 20
  python benchmarks/resnet_speed.py --rounds 1 --steps 20 --compile
  python benchmarks/resnet_speed.py --breakdown --rounds 1 --steps 10
  python benchmarks/resnet_speed.py --profile

The model is ResNet-18 with the small stem, for 28 x 28 x 1 images: a 3x3
stride-1 convolution to 64 channels, BatchNorm and ReLU, no max-pool; basic
blocks [2, 2, 2, 2] of 64, 128, 256 and 512 channels, strides 1, 2, 2, 2; 1x1
convolutions with BatchNorm on the shortcuts where the shape changes; global
average pooling and a linear layer to 10 classes. float32, batch 128, BatchNorm
in train mode, SGD with momentum 0.9 (learning rate 0.01), softmax
cross-entropy.

JAX trains `Classifier(resnet('resnet18', stem='small'), num_classes=10)` with
`objectives.classification()` through `make_train_step`, jitted with the state
donated, on the default CPU device. PyTorch trains the same network, written
out below, eagerly (or under `torch.compile` with `--compile`), with
`torch.optim.SGD` and `F.cross_entropy`. Both start from the same weights (JAX's
initialisation, copied into PyTorch), so their first losses agree, and both see
the same 10 batches of real Fashion-MNIST images (the first 1,280 of the
training split, scaled to [0, 1]), already in memory, in the same order.

As in `benchmarks/text_speed.py`, every measurement runs in a subprocess of its
own, the frameworks taking turns (their order swaps each round), and so does a
float32 4096^3 matmul in JAX, NumPy and PyTorch that gives the CPU's practical
peak. Per run:

- images/s from the median of the timed steps, each run to completion
  (`block_until_ready`; PyTorch is synchronous);
- compile time (JAX's ahead-of-time `lower().compile()`) and the first step;
- peak memory: the process's peak RSS less its RSS once imports and data are
  done, over the whole run and over the timed steps alone;
- model FLOP/s, counted analytically for both: 2 FLOPs per multiply-add of every
  convolution and of the linear layer in the forward pass, times 3 for
  training (forward, gradient of the input, gradient of the weights);
  BatchNorm, ReLU, the residual sums and the optimizer are not counted.

`--breakdown` times both frameworks on variants of the step (forward pass
only; no BatchNorm); `--profile` shows where JAX's step spends its time by
kind of operation. Each prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

import speed_common as common

BATCH, BATCHES, CLASSES = 128, 10, 10
IMAGE, CHANNELS = 28, 1
STEM_WIDTH, WIDTHS, STAGE_SIZES = 64, (64, 128, 256, 512), (2, 2, 2, 2)
LR, MOMENTUM = 0.01, 0.9
MODES = {
    'train': 'training step (forward, backward, SGD update)',
    'forward': 'forward pass only (train-mode BatchNorm, no gradients)',
    'no_bn': 'training step without BatchNorm (every norm an identity)',
}


def _conv_macs(size: int, c_in: int, c_out: int, kernel: int, stride: int
               ) -> tuple[int, int]:
  """Output size and multiply-adds of a square convolution padded by `kernel // 2`."""
  out = (size + 2 * (kernel // 2) - kernel) // stride + 1
  return out, out * out * c_in * c_out * kernel * kernel


def forward_macs() -> int:
  """Multiply-adds of one image's forward pass through the convolutions and the linear layer."""
  size, total = _conv_macs(IMAGE, CHANNELS, STEM_WIDTH, 3, 1)
  c_in = STEM_WIDTH
  for s, (blocks, width) in enumerate(zip(STAGE_SIZES, WIDTHS)):
    for b in range(blocks):
      stride = 2 if b == 0 and s > 0 else 1
      out, macs0 = _conv_macs(size, c_in, width, 3, stride)
      _, macs1 = _conv_macs(out, width, width, 3, 1)
      total += macs0 + macs1
      if c_in != width or stride != 1:
        total += _conv_macs(size, c_in, width, 1, stride)[1]
      size, c_in = out, width
  return total + c_in * CLASSES


def train_flops_per_image() -> float:
  """3 x the forward FLOPs (2 per multiply-add): forward, input and weight gradients."""
  return 3 * 2 * forward_macs()


def fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
  """The first BATCHES * BATCH training images, NHWC float32 in [0, 1], and their labels."""
  from jaxpretrain.data import data_source
  examples = data_source('fashion_mnist', f'train[:{BATCHES * BATCH}]').__getitems__(
      list(range(BATCHES * BATCH)))
  images_NxHxWxC = np.stack([e['image'] for e in examples]).astype(np.float32) / 255.0
  return images_NxHxWxC, np.array([e['label'] for e in examples], np.int32)


# ---------------------------------------------------------------------------------------------
# JAX


class _NoNorm:
  """Stands in for `resnet._batch_norm`: an identity module under the same name."""

  def __call__(self, train: bool, axis_name: str | None, name: str) -> Any:
    import flax.linen as nn

    class Identity(nn.Module):
      def __call__(self, x: Any) -> Any:
        return x

    return Identity(name=name)


def jax_model() -> Any:
  from jaxpretrain.models.heads import Classifier
  from jaxpretrain.models.resnet import resnet
  return Classifier(resnet('resnet18', stem='small'), num_classes=CLASSES)


def jax_state(batch: dict[str, Any]) -> Any:
  """A fresh train state (seed 0) with the benchmark's SGD."""
  import jax
  import optax
  from jaxpretrain import finetune
  return finetune.create_state(jax_model(), finetune.identity(),
                               tx=optax.sgd(LR, momentum=MOMENTUM),
                               rng=jax.random.PRNGKey(0), example_batch=batch)


def init_worker(path: str) -> dict[str, Any]:
  """Saves JAX's initial parameters, `/`-joined names to arrays, for PyTorch to start from."""
  import jax
  from jaxpretrain import tree as tree_lib
  images, labels = fashion_mnist()
  state = jax_state({'image': images[:BATCH], 'label': labels[:BATCH]})
  params = {k: np.asarray(v) for k, v in tree_lib.flatten(jax.device_get(state.params)).items()}
  np.savez(path, **params)
  return dict(params=sum(v.size for v in params.values()))


def _jax_program(mode: str, batch: dict[str, Any]) -> tuple[Any, Any, float]:
  """The mode's compiled step, its initial state, and the seconds compilation took."""
  import importlib
  import jax
  from jaxpretrain import objectives
  from jaxpretrain.step import make_train_step
  # The package re-exports the function `resnet` under the module's name.
  resnet_lib = importlib.import_module('jaxpretrain.models.resnet')

  objective = objectives.classification()
  original = resnet_lib._batch_norm
  if mode == 'no_bn':
    resnet_lib._batch_norm = _NoNorm()
  try:
    state = jax_state(batch)
    if mode == 'forward':
      def step(state, batch):
        loss, _ = objective(state.apply_fn, state.params, batch, state.rng,
                            model_state=state.model_state, train=True)
        return state, {'loss': loss}
      jitted = jax.jit(step)
    else:
      jitted = jax.jit(make_train_step(objective), donate_argnums=0)
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    return compiled, state, time.perf_counter() - start
  finally:
    resnet_lib._batch_norm = original


def jax_worker(mode: str, steps: int, warmup: int, profile: bool = False) -> dict[str, Any]:
  """Trains `warmup` then `steps` timed steps; returns the measurements."""
  import jax
  images, labels = fashion_mnist()
  batches = [jax.device_put({'image': images[i * BATCH:(i + 1) * BATCH],
                             'label': labels[i * BATCH:(i + 1) * BATCH]})
             for i in range(BATCHES)]
  baseline = common.rss_mb()
  compiled, state, compile_s = _jax_program(mode, batches[0])
  losses = []

  def step(i: int) -> None:
    nonlocal state
    state, metrics = compiled(state, batches[i % BATCHES])
    losses.append(jax.block_until_ready((state, metrics))[1]['loss'])

  warm, times, memory = common.timed_steps(step, warmup, steps, baseline)
  result = dict(times=times, compile_s=compile_s, first_step_s=warm[0], **memory,
                params=sum(x.size for x in jax.tree.leaves(state.params)),
                losses=[float(losses[0]), float(losses[-1])],
                xla_flops=common.xla_flops(compiled),
                xla_temp_mb=compiled.memory_analysis().temp_size_in_bytes / 2 ** 20,
                setup=f'XLA:CPU, {os.cpu_count()} cores, {jax.devices()[0]}')
  if profile:
    result['profile'] = common.profile(step, 3, _op_kinds(compiled.as_text()),
                                       other='SGD update, gradient norm, copies')
  return result


def _op_kinds(hlo: str) -> dict[str, str]:
  """What each instruction of an optimised HLO module does, judged by what it computes.

  A convolution over a window of the kernel's size is a forward one, or, under
  `transpose(jvp(...))` in its `op_name`, the gradient of an input; one whose
  window spans the feature map is the gradient of a kernel. A loop that
  transposes an activation lays it out for such a kernel gradient.
  """
  kinds = {}
  for name, rest, body in common.hlo_instructions(hlo):
    sources = ' '.join(re.findall(r'op_name="([^"]*)"', body + rest))
    op = lambda *names: common.has_op(body, *names)
    if op('convolution'):
      window = re.findall(r'window=\{size=(\d+)x', body)
      kind = ('convolutions: kernel gradients' if window and int(window[0]) > 3 else
              'convolutions: input gradients' if 'transpose(' in sources else
              'convolutions: forward')
    elif op('dot'):
      kind = 'linear head'
    elif op('transpose'):
      kind = ('transposed copies of activations, BatchNorm and ReLU recomputed in them'
              if op('multiply', 'maximum') else 'transposed copies')
    elif 'norm' in sources.lower():
      kind = ('BatchNorm: backward' if 'transpose(' in sources else 'BatchNorm: forward')
    elif 'transpose(' in sources:
      kind = 'other backward: ReLU, residual sums, pooling'
    elif 'jvp(' in sources:
      kind = 'other forward: ReLU, residual sums, pooling, loss'
    else:
      kind = 'SGD update, gradient norm, copies'
    kinds[name] = kind
  return kinds


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_resnet18(norm: bool = True) -> Any:
  """ResNet-18 with the small stem, its modules named like the Flax model's parameters."""
  import torch
  from torch import nn

  def batch_norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1) if norm else nn.Identity()

  class BasicBlock(nn.Module):

    def __init__(self, c_in: int, width: int, stride: int):
      super().__init__()
      self.conv0 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
      self.norm0 = batch_norm(width)
      self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.norm1 = batch_norm(width)
      self.projected = c_in != width or stride != 1
      if self.projected:
        self.shortcut_conv = nn.Conv2d(c_in, width, 1, stride, 0, bias=False)
        self.shortcut_norm = batch_norm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      y = torch.relu(self.norm0(self.conv0(x)))
      y = self.norm1(self.conv1(y))
      residual = self.shortcut_norm(self.shortcut_conv(x)) if self.projected else x
      return torch.relu(y + residual)

  class Stem(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv = nn.Conv2d(CHANNELS, STEM_WIDTH, 3, 1, 1, bias=False)
      self.norm = batch_norm(STEM_WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      return torch.relu(self.norm(self.conv(x)))

  class ResNet18(nn.Module):

    def __init__(self):
      super().__init__()
      layers, c_in = {'stem': Stem()}, STEM_WIDTH
      for s, (blocks, width) in enumerate(zip(STAGE_SIZES, WIDTHS)):
        for b in range(blocks):
          layers[f'stage{s}_block{b}'] = BasicBlock(c_in, width, 2 if b == 0 and s > 0 else 1)
          c_in = width
      self.encoder = nn.Sequential()
      for name, layer in layers.items():
        self.encoder.add_module(name, layer)
      self.head = nn.Module()
      self.head.dense = nn.Linear(c_in, CLASSES)

    def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
      features_BxD = self.encoder(x_BxCxHxW).mean(dim=(2, 3))
      return self.head.dense(features_BxD)

  return ResNet18()


def _load_flax_params(model: Any, flax_params: dict[str, np.ndarray]) -> None:
  """Copies Flax parameters into the PyTorch model of the same names (HWIO -> OIHW)."""
  import torch
  renamed = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
  with torch.no_grad():
    for path, value in flax_params.items():
      *module, leaf = path.split('/')
      name = '.'.join(module + [renamed[leaf]])
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      elif value.ndim == 2:
        value = value.T
      try:
        param = model.get_parameter(name)
      except AttributeError:
        continue  # A BatchNorm parameter the model without BatchNorm lacks.
      param.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def torch_worker(mode: str, steps: int, warmup: int, threads: int, layout: str, compile: bool,
                 init: str) -> dict[str, Any]:
  """The same network in PyTorch, trained eagerly or compiled; returns the measurements."""
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(threads)
  memory_format = {'nchw': torch.contiguous_format, 'nhwc': torch.channels_last}[layout]
  images, labels = fashion_mnist()
  batches = [(torch.from_numpy(images[i * BATCH:(i + 1) * BATCH]).permute(0, 3, 1, 2)
              .contiguous(memory_format=memory_format),
              torch.from_numpy(labels[i * BATCH:(i + 1) * BATCH]).long())
             for i in range(BATCHES)]
  flax_params = dict(np.load(init))
  baseline = common.rss_mb()
  model = torch_resnet18(norm=mode != 'no_bn')
  _load_flax_params(model, flax_params)
  model = model.to(memory_format=memory_format).train()
  forward = torch.compile(model) if compile else model
  optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
  losses = []

  def step(i: int) -> None:
    x, y = batches[i % BATCHES]
    if mode == 'forward':
      with torch.no_grad():
        loss = F.cross_entropy(forward(x), y)
    else:
      loss = F.cross_entropy(forward(x), y)
      loss.backward()
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
    losses.append(loss.item())

  warm, times, memory = common.timed_steps(step, warmup, steps, baseline)
  return dict(times=times, compile_s=None, first_step_s=warm[0], **memory,
              params=sum(p.numel() for p in model.parameters()),
              losses=[losses[0], losses[-1]],
              setup=f'{torch.get_num_threads()} intra-op threads, '
                    f'{"channels-last" if layout == "nhwc" else "contiguous NCHW"}, '
                    f'{"torch.compile" if compile else "eager"}, mkldnn '
                    f'{torch.backends.mkldnn.is_available()}')


# ---------------------------------------------------------------------------------------------
# Driver

# (framework, PyTorch layout, torch.compile): the runs of the main table.
_LABELS = {('jax', None, False): 'JAX (jaxpretrain)',
           ('torch', 'nchw', False): 'PyTorch eager, NCHW',
           ('torch', 'nhwc', False): 'PyTorch eager, channels-last',
           ('torch', 'nchw', True): 'PyTorch torch.compile, NCHW',
           ('torch', 'nhwc', True): 'PyTorch torch.compile, channels-last'}


def _worker_args(run: tuple, mode: str, steps: int, warmup: int, threads: int, init: str
                 ) -> list[str]:
  framework, layout, compile = run
  args = ['--worker', framework, '--mode', mode, '--steps', str(steps), '--warmup',
          str(warmup)]
  if framework == 'torch':
    args += ['--threads', str(threads), '--layout', layout, '--init', init]
    if compile:
      args.append('--torch-compile')
  return args


def measure(runs: list[tuple], modes: list[str], rounds: int, steps: int, warmup: int,
            threads: int, matmul: bool) -> tuple[dict, dict, int]:
  """All runs, taking turns (the order reversed every other round), and the matmul timings."""
  results = {(run, mode): [] for run in runs for mode in modes}
  matmuls = {lib: [] for lib in common.LIBRARIES} if matmul else {}
  with tempfile.TemporaryDirectory() as tmp:
    init = os.path.join(tmp, 'init.npz')
    flax_params = common.spawn(__file__, ['--worker', 'init', '--init', init])['params']
    for r in range(rounds):
      common.spawn_matmuls(__file__, matmuls)
      for mode in modes:
        for run in (runs if r % 2 == 0 else runs[::-1]):
          result = common.spawn(__file__, _worker_args(run, mode, steps, warmup, threads, init))
          print(f'round {r}, {_LABELS[run]}, {mode}: median step '
                f'{statistics.median(result["times"]):.3f} s, loss {result["losses"]}',
                file=sys.stderr)
          results[(run, mode)].append(result)
  return results, matmuls, flax_params


def table(results: dict, matmuls: dict, runs: list[tuple], flax_params: int) -> str:
  """The Markdown table of the training runs against the matmul peak."""
  peaks = common.matmul_peaks(matmuls)
  flops = train_flops_per_image()
  eager = {run: common.median_step(results[(run, 'train')]) for run in runs if not run[2]}
  torch_best = min((run for run in eager if run[0] == 'torch'), key=eager.get)
  lines = ['| framework | images/s | step | JAX speed ÷ this | compile; first step | '
           'peak memory: run (timed steps) | model GFLOP/s | % of matmul peak: JAX (best) | '
           'loss: first, last step |',
           '|---|---|---|---|---|---|---|---|---|']
  notes = []
  for run in runs:
    rs = results[(run, 'train')]
    step_s = common.median_step(rs)
    first_step_s = statistics.median(r['first_step_s'] for r in rs)
    achieved = flops * BATCH / step_s
    lines.append(
        f"| {_LABELS[run]} | {BATCH / step_s:,.0f} | {1000 * step_s:,.0f} ms | "
        f"{step_s / eager[('jax', None, False)]:.2f}× | "
        f"{common.compile_cell(rs)}; {first_step_s:.1f} s | {common.memory_cell(rs)} | "
        f"{achieved / 1e9:.1f} | {common.peak_share(achieved, peaks)} | "
        f"{rs[0]['losses'][0]:.4f}, {rs[0]['losses'][1]:.4f} |")
    notes.append(f"{_LABELS[run]}: {rs[0]['params']:,} parameters, {rs[0]['setup']}, "
                 f"{len(rs)} run(s) of {len(rs[0]['times'])} timed steps"
                 + (f"; XLA counts {rs[0]['xla_flops'] / 1e9:.0f} GFLOP per step and "
                    f"{rs[0]['xla_temp_mb']:.0f} MB of temporary buffers"
                    if run[0] == 'jax' else ''))
  counts = {results[(run, 'train')][0]['params'] for run in runs} | {flax_params}
  if len(counts) != 1:
    raise ValueError(f'parameter counts differ: {counts}')
  lines += ['', f'Headline: JAX runs at {eager[torch_best] / eager[("jax", None, False)]:.2f}× '
            f'the speed of the faster PyTorch eager layout ({_LABELS[torch_best]}).',
            f'Parameters: {counts.pop():,} on every side.',
            f'Model FLOPs per image: forward {2 * forward_macs() / 1e6:,.1f} MFLOP '
            f'({forward_macs():,} multiply-adds), training 3× = {flops / 1e9:.3f} GFLOP; '
            f'{flops * BATCH / 1e9:.1f} GFLOP per step of {BATCH}.',
            *common.machine_lines(matmuls), '',
            *[f'- {n}' for n in notes]]
  return '\n'.join(lines)


def breakdown(results: dict, runs: list[tuple], modes: list[str]) -> str:
  """Each run's step per mode; a Markdown table."""
  lines = ['| step | ' + ' | '.join(_LABELS[run] for run in runs)
           + ' | JAX speed ÷ faster PyTorch eager |',
           '|---|' + '---|' * (len(runs) + 1)]
  for mode in modes:
    steps = [common.median_step(results[(run, mode)]) for run in runs]
    torch_best = min(s for run, s in zip(runs, steps) if run[0] == 'torch' and not run[2])
    lines.append(f'| {MODES[mode]} | '
                 + ' | '.join(f'{1000 * s:,.0f} ms' for s in steps)
                 + f' | {torch_best / steps[0]:.2f}× |')
  return '\n'.join(lines)


def profile(steps: int, warmup: int) -> str:
  """Where JAX's training step spends its time, by kind of operation; a Markdown table."""
  result = common.spawn(__file__, ['--worker', 'jax', '--profile', '--steps', str(steps),
                                  '--warmup', str(warmup)])['profile']
  wall = result['step (wall time)']
  lines = ['| operations | time per step |', '|---|---|']
  for kind, t in sorted(result.items(), key=lambda kv: -kv[1]):
    lines.append(f'| {kind} | {1000 * t:,.0f} ms'
                 + ('' if kind == 'step (wall time)' else f' ({100 * t / wall:.0f}%)') + ' |')
  lines += ['', 'Time inside XLA operations, summed over the threads that ran them '
            f'(a `jax.profiler` trace of 3 steps), against the traced wall time of a step.']
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=2,
                      help='measurements of each run, in alternating order')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per measurement')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2, help='PyTorch intra-op threads')
  parser.add_argument('--layouts', nargs='+', default=['nchw', 'nhwc'], choices=['nchw', 'nhwc'],
                      help='PyTorch memory formats to run (nhwc: channels-last)')
  parser.add_argument('--compile', action='store_true',
                      help='also run PyTorch under torch.compile (in each layout)')
  parser.add_argument('--breakdown', action='store_true',
                      help='time the forward pass alone and the step without BatchNorm too')
  parser.add_argument('--profile', action='store_true',
                      help="profile JAX's step by kind of operation instead")
  parser.add_argument('--worker', choices=['jax', 'torch', 'matmul', 'init'],
                      help=argparse.SUPPRESS)
  parser.add_argument('--mode', choices=list(MODES), default='train', help=argparse.SUPPRESS)
  parser.add_argument('--layout', choices=['nchw', 'nhwc'], help=argparse.SUPPRESS)
  parser.add_argument('--torch-compile', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--library', choices=['jax', 'numpy', 'torch'], help=argparse.SUPPRESS)
  parser.add_argument('--init', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == 'matmul':
    print(json.dumps(common.matmul_worker(args.library, repeats=5)))
  elif args.worker == 'init':
    print(json.dumps(init_worker(args.init)))
  elif args.worker == 'jax':
    print(json.dumps(jax_worker(args.mode, args.steps, args.warmup, profile=args.profile)))
  elif args.worker == 'torch':
    print(json.dumps(torch_worker(args.mode, args.steps, args.warmup, args.threads,
                                  args.layout, args.torch_compile, args.init)))
  elif args.profile:
    print(profile(args.steps, args.warmup))
  else:
    runs = [('jax', None, False)] + [('torch', layout, False) for layout in args.layouts]
    runs += [('torch', layout, True) for layout in args.layouts if args.compile]
    modes = ['train'] + (['forward', 'no_bn'] if args.breakdown else [])
    results, matmuls, flax_params = measure(runs, modes, args.rounds, args.steps, args.warmup,
                                            args.threads, matmul=True)
    print(table(results, matmuls, runs, flax_params))
    if args.breakdown:
      print()
      print(breakdown(results, runs, modes))


if __name__ == '__main__':
  main()
