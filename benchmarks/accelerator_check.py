"""BERT-base MLM and ResNet-50 in bfloat16 with FSDP, on whatever accelerator JAX sees.

  python benchmarks/accelerator_check.py            # on a GPU or TPU (a few minutes)
  python benchmarks/accelerator_check.py --tiny     # on a CPU: BERT-tiny and ResNet-18, small

Each model trains with AdamW through `make_train_step`, jitted over a mesh of
every device with its parameters and optimizer state sharded over the data
axis (`parallel.fsdp`), compute in bfloat16 and parameters in float32. BERT
runs twice: with the library's own layers (tuned for XLA:CPU) and with the
stock Flax forms (`layers='flax'`), so that an accelerator user can see which
to choose. Per run it prints:

- examples per second (tokens for BERT, images for ResNet) from the median of
  the timed steps, each run to completion;
- model FLOPs utilisation: the FLOPs XLA counts in the unpartitioned training
  step (`Lowered.cost_analysis`) per second, over the devices' dense bfloat16
  peak (`PEAK_TFLOPS`; n/a for a device not listed);
- peak device memory (`memory_stats`, where the backend reports it; else the
  compiled step's arguments, outputs and temporaries).

Inputs are synthetic: token ids and pixel values drawn at random, since a
step's speed does not depend on their values.
"""

import argparse
import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpretrain import finetune, models, objectives, parallel
from jaxpretrain.step import make_train_step

# Dense bfloat16 TFLOP/s of one JAX device, by a substring of its `device_kind`
# (vendors' data sheets; TPU v2 and v3 show each of a chip's two cores as a device).
PEAK_TFLOPS = {
    'H200': 989.0, 'H100 PCIe': 756.0, 'H100': 989.0, 'A100': 312.0, 'L40S': 362.0,
    'L4': 121.0, 'A10': 125.0, 'V100': 125.0, 'T4': 65.0,
    'TPU v2': 22.5, 'TPU v3': 61.5, 'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0,
    'TPU v5p': 459.0, 'TPU v5': 459.0, 'TPU v6 lite': 918.0, 'TPU v6e': 918.0,
}
MASK_ID, SPECIAL_IDS = 103, (0, 101, 102)


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model to train: its module, objective, a batch maker and what one example counts."""
  name: str
  model: Any
  objective: Any
  batch: Any  # (global batch size, numpy rng) -> batch dict
  units_per_example: int
  unit: str


def peak_tflops(device: jax.Device) -> float | None:
  """The device's dense bfloat16 peak, or None when `PEAK_TFLOPS` does not list it."""
  kind = device.device_kind
  for name, tflops in PEAK_TFLOPS.items():  # Longer names come first where they overlap.
    if name in kind:
      return tflops
  return None


def bert(tiny: bool, seq: int, layers: str, dtype: Any) -> Workload:
  """BERT-base masked LM (BERT-tiny with `tiny`), no pooler, as Hugging Face trains it."""
  cfg = dataclasses.replace(models.PRESETS['bert_tiny' if tiny else 'bert_base'], pooler=False,
                            max_position_embeddings=max(512, seq), dtype=dtype, layers=layers)

  def batch(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {'input_ids': rng.integers(1000, cfg.vocab_size, (n, seq), dtype=np.int32),
            'attention_mask': np.ones((n, seq), np.int32),
            'token_type_ids': np.zeros((n, seq), np.int32)}

  objective = objectives.masked_lm(mask_id=MASK_ID, vocab_size=cfg.vocab_size,
                                   special_ids=SPECIAL_IDS)
  return Workload(f'BERT-{"tiny" if tiny else "base"} MLM ({layers} layers)',
                  models.BertForMaskedLM(cfg), objective, batch, seq, 'tokens')


def resnet(tiny: bool, size: int, dtype: Any) -> Workload:
  """ResNet-50 (ResNet-18 with `tiny`) classifying 1,000 classes of `size` x `size` images."""
  encoder = models.resnet('resnet18' if tiny else 'resnet50', dtype=dtype)
  classes = 10 if tiny else 1000

  def batch(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {'image': rng.random((n, size, size, 3), dtype=np.float32),
            'label': rng.integers(0, classes, (n,), dtype=np.int32)}

  return Workload(f'ResNet-{18 if tiny else 50}', models.Classifier(encoder, classes),
                  objectives.classification(), batch, 1, 'images')


def run(w: Workload, per_device: int, steps: int, warmup: int, mesh: Any) -> dict[str, Any]:
  """Trains `w` for `warmup + steps` steps with FSDP over `mesh`; returns its figures."""
  n = per_device * mesh.size
  rng = np.random.default_rng(0)
  batches = [w.batch(n, rng) for _ in range(2)]
  tx = optax.adamw(1e-4, weight_decay=0.01)
  state = parallel.init_state(
      lambda: finetune.create_state(w.model, finetune.identity(), tx=tx,
                                    rng=jax.random.PRNGKey(0), example_batch=batches[0]),
      mesh, fsdp=True)
  step = make_train_step(w.objective)
  placed = [parallel.shard_batch(b, mesh) for b in batches]
  flops = jax.jit(step).lower(state, placed[0]).cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops or {}).get('flops')
  start = time.perf_counter()
  compiled = parallel.jit(step, mesh, state, fsdp=True).lower(state, placed[0]).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, placed[i % 2])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times[warmup:])
  device = mesh.devices.flat[0]
  peak = peak_tflops(device)
  stats = device.memory_stats() or {}
  memory = stats.get('peak_bytes_in_use')
  if memory is None:
    m = compiled.memory_analysis()
    memory = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return dict(name=w.name, batch=n, compile_s=compile_s, step_s=step_s,
              per_s=n * w.units_per_example / step_s, unit=w.unit,
              loss=float(metrics['loss']),
              mfu=flops / step_s / (peak * 1e12 * mesh.size) if flops and peak else None,
              memory_gib=memory / 2 ** 30)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tiny', action='store_true', help='small models and batches, for a CPU')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--bert-batch', type=int, default=None, help='sequences per device')
  parser.add_argument('--resnet-batch', type=int, default=None, help='images per device')
  parser.add_argument('--seq', type=int, default=None)
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float16', 'float32'))
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  seq = args.seq or (64 if args.tiny else 512)
  size = 32 if args.tiny else 224
  devices = jax.devices()
  print(f'{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), '
        f'jax {jax.__version__}, {args.dtype}, FSDP over all devices')
  mesh = parallel.make_mesh()
  workloads = [(bert(args.tiny, seq, layers, dtype), args.bert_batch or (2 if args.tiny else 16))
               for layers in ('fast', 'flax')]
  workloads.append((resnet(args.tiny, size, dtype), args.resnet_batch or (2 if args.tiny else 64)))
  results = []
  print('| model | global batch | compile s | step s | per second | MFU | peak GiB | loss |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')
  for w, per_device in workloads:
    r = run(w, per_device, args.steps, args.warmup, mesh)
    mfu = f'{r["mfu"]:.1%}' if r['mfu'] is not None else 'n/a'
    print(f'| {r["name"]} | {r["batch"]} | {r["compile_s"]:.1f} | {r["step_s"]:.4f} | '
          f'{r["per_s"]:,.0f} {r["unit"]} | {mfu} | {r["memory_gib"]:.2f} | {r["loss"]:.3f} |',
          flush=True)
    results.append(r)
  return results


if __name__ == '__main__':
  main()
