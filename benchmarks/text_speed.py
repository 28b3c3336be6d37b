"""Training throughput of BERT-mini masked LM and GPT-mini causal LM: JAX against PyTorch eager.

  python benchmarks/text_speed.py --rounds 2 --steps 20
  python benchmarks/text_speed.py --profile
  python benchmarks/text_speed.py --breakdown --steps 10

Two workloads, fp32, AdamW, dropout 0.1 on embeddings, residual branches and
attention probabilities, random token ids in batches without padding:

  bert_mlm  4 layers, hidden 256, 4 heads, FFN 1024, vocabulary 30,522,
            128 tokens, batch 32, 15% of the tokens predicted;
  gpt_clm   the same blocks (pre-norm), vocabulary 8,192, 256 tokens, batch 16.

JAX trains `BertForMaskedLM` / `GPTForCausalLM` with `objectives.masked_lm` /
`causal_lm` through `make_train_step`, jitted with the state donated; the
masked LM draws its masks inside the step and projects onto the vocabulary only
at the masked positions. PyTorch trains Hugging Face's `BertForMaskedLM` /
`GPT2LMHeadModel` of the same shapes in eager mode with `torch.optim.AdamW`;
its masked batches (80/10/10, labels -100 elsewhere) are made before timing,
and it projects every position onto the vocabulary, as that model does.

Every measurement runs in a subprocess of its own, the frameworks taking turns
(their order swaps each round), and so does a float32 matmul of 4096 x 4096
by 4096 x 4096 in JAX, NumPy and PyTorch that gives the CPU's practical peak.
PyTorch runs `--threads` intra-op threads (default: all cores); XLA:CPU uses
all cores by default. Per framework and workload:

- tokens/s, from the median of the timed steps, each run to completion
  (`block_until_ready`; PyTorch eager is synchronous);
- compile time: JAX's ahead-of-time `lower().compile()`;
- peak memory: the process's peak RSS (`getrusage().ru_maxrss`) minus its RSS
  once imports and data are done, so the model, optimizer state, compilation
  and activations all count; once over the whole run, and once over the timed
  steps alone (the peak restarted from the current RSS after warm-up);
- useful FLOP/s, from the same count for both frameworks:

    6 N + 12 n_layers d_model T     per token, for the blocks (N: their matmul
                                    weights; the standard count of the attention
                                    scores over the full T x T, causal or not),
    + 6 (d_model^2 + d_model V)     per masked token (MLM head and vocabulary),
    + 6 d_model V                   per token (CLM vocabulary);

  PyTorch's projection of every position onto the vocabulary is not useful work.

`--profile` instead shows where JAX's step spends its time, by kind of
operation; `--breakdown` times variants of the JAX step against the default:
the stock Flax/JAX form of each of jaxpretrain's fast layers
(`jaxpretrain.models.layers`: dense, dropout, tied projection, bias; the
vocabulary projection fused with the loss, `jaxpretrain.models.vocab_loss`;
the accuracy metric without argmax), other PRNGs and XLA flags. Each prints a
Markdown table for BENCHMARKS.md.
"""

import argparse
import dataclasses
import functools
import json
import os
import re
import statistics
import sys
import time
from typing import Any, NamedTuple

import numpy as np

import speed_common as common

CLS, SEP, MASK = 101, 102, 103  # BERT's WordPiece ids; 0 is padding, 100 unknown.
SPECIAL = (0, 100, CLS, SEP, MASK)
LR, WEIGHT_DECAY = 1e-4, 0.01


class Workload(NamedTuple):
  """The shape of one training run."""
  title: str
  masked: bool  # Masked LM (BERT, post-norm) or causal LM (GPT-2, pre-norm).
  layers: int
  hidden: int
  heads: int
  ffn: int
  vocab: int
  length: int
  batch: int
  rate: float = 0.15


WORKLOADS = {
    'bert_mlm': Workload('BERT-mini MLM', True, 4, 256, 4, 1024, 30522, 128, 32),
    'gpt_clm': Workload('GPT-mini CLM', False, 4, 256, 4, 1024, 8192, 256, 16),
}


class Variant(NamedTuple):
  """A change to the JAX run, for `--breakdown` to measure against the default."""
  what: str
  prng: str = 'threefry2x32'
  partitionable: bool = True  # `jax_threefry_partitionable`, on by default since JAX 0.5.
  dropout: float = 0.1
  stock: tuple[str, ...] = ()  # Pieces of `STOCK` used in place of jaxpretrain's own.
  xla_flags: str = ''


def _stock_dense(cfg, features, name, std=None, use_bias=True):
  import flax.linen as nn
  return nn.Dense(features, use_bias=use_bias, dtype=cfg.dtype, name=name,
                  kernel_init=nn.initializers.normal(std or cfg.initializer_range))


def _stock_pieces() -> dict[str, tuple[Any, str, Any]]:
  """The stock Flax/JAX forms of jaxpretrain's fast layers: (module, attribute, stand-in)."""
  import flax.linen as nn
  import jax.numpy as jnp
  from jaxpretrain.models import transformer
  from jaxpretrain.objectives import language
  return {
      'loss': (language, '_predict', functools.partial(language._predict, fused=False)),
      'dense': (transformer, '_dense', _stock_dense),
      'dropout': (transformer, 'Dropout', nn.Dropout),
      'projection': (transformer, 'tied_logits', lambda x, table: x @ table.T),
      'bias': (transformer, 'add_bias', lambda x, bias: x + bias),
      'accuracy': (language, 'top1_hits', lambda *, logits, labels: (
          jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
  }


STOCK = ('loss', 'dense', 'dropout', 'projection', 'bias', 'accuracy')
_YNN_DOTS = '--xla_cpu_experimental_ynn_fusion_type=dot'
VARIANTS = {
    'default': Variant('as shipped: threefry2x32 PRNG, XLA defaults'),
    'all_stock': Variant('all six stock pieces below (the step before these layers)',
                         stock=STOCK),
    'stock_loss': Variant('the (N, V) logits materialised, their loss by autodiff '
                          '(no fused projection)', stock=('loss',)),
    'stock_dense': Variant('flax.linen.Dense (autodiff backward) for every dense layer',
                           stock=('dense',)),
    'stock_dropout': Variant('flax.linen.Dropout (a 32-bit float per element)',
                             stock=('dropout',)),
    'stock_projection': Variant('autodiff of `x @ E.T` for the tied vocabulary projection',
                                stock=('projection',)),
    'stock_bias': Variant('autodiff of `logits + bias` for the MLM head bias', stock=('bias',)),
    'argmax_accuracy': Variant('accuracy metric by argmax', stock=('accuracy',)),
    'no_dropout': Variant('no dropout at all (what dropout costs in all)', dropout=0.0),
    'rbg': Variant("PRNG 'rbg'", prng='rbg'),
    'threefry_unpartitioned': Variant('threefry with jax_threefry_partitionable=False',
                                      partitionable=False),
    'ynn_dots_only': Variant(f'XLA flag {_YNN_DOTS}', xla_flags=_YNN_DOTS),
    'onednn': Variant('XLA flag --xla_cpu_use_onednn=true', xla_flags='--xla_cpu_use_onednn=true'),
}


def masked_per_row(w: Workload) -> int:
  """Predicted tokens per row: `rate` of the tokens between [CLS] and [SEP], rounded."""
  return round(w.rate * (w.length - 2))


def useful_flops(w: Workload) -> float:
  """Training FLOPs of one step by the formula of the module docstring."""
  tokens = w.batch * w.length
  n = w.layers * (4 * w.hidden ** 2 + 2 * w.hidden * w.ffn)
  blocks = tokens * (6 * n + 12 * w.layers * w.hidden * w.length)
  if w.masked:
    return blocks + 6 * w.batch * masked_per_row(w) * (w.hidden ** 2 + w.hidden * w.vocab)
  return blocks + 6 * tokens * w.hidden * w.vocab


def _token_ids(w: Workload, rng: np.random.Generator) -> np.ndarray:
  """A batch of random ordinary ids; BERT rows start with [CLS] and end with [SEP]."""
  ids = rng.integers(1000, w.vocab, (w.batch, w.length), dtype=np.int64)
  if w.masked:
    ids[:, 0], ids[:, -1] = CLS, SEP
  return ids


def _mask_for_torch(ids: np.ndarray, w: Workload, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
  """BERT's 80/10/10 masking of `masked_per_row` tokens per row; labels -100 elsewhere."""
  inputs, labels = ids.copy(), np.full_like(ids, -100)
  for row in range(w.batch):
    picked = 1 + rng.permutation(w.length - 2)[:masked_per_row(w)]
    labels[row, picked] = ids[row, picked]
    kind = rng.random(picked.size)
    inputs[row, picked[kind < 0.8]] = MASK
    swapped = picked[(kind >= 0.8) & (kind < 0.9)]
    inputs[row, swapped] = rng.integers(1000, w.vocab, swapped.size)
  return inputs, labels


# ---------------------------------------------------------------------------------------------
# JAX


def jax_batches(w: Workload, seed: int = 0) -> list[dict[str, Any]]:
  """Four batches of the workload on the device, as a tokenizer gives them."""
  import jax
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(4):
    batch = {'input_ids': _token_ids(w, rng).astype(np.int32),
             'attention_mask': np.ones((w.batch, w.length), np.int32)}
    if w.masked:
      batch['token_type_ids'] = np.zeros((w.batch, w.length), np.int32)
    batches.append(jax.device_put(batch))
  return batches


def jax_model(w: Workload, *, dropout: float = 0.1) -> tuple[Any, Any]:
  """The jaxpretrain model and objective of a workload."""
  from jaxpretrain import models, objectives
  if w.masked:
    # Hugging Face's BertForMaskedLM has no pooler.
    cfg = dataclasses.replace(models.PRESETS['bert_mini'], vocab_size=w.vocab,
                              num_layers=w.layers, hidden_size=w.hidden, num_heads=w.heads,
                              intermediate_size=w.ffn, pooler=False, dropout=dropout,
                              attention_dropout=dropout)
    return models.BertForMaskedLM(cfg), objectives.masked_lm(
        mask_id=MASK, vocab_size=w.vocab, special_ids=SPECIAL, rate=w.rate)
  cfg = dataclasses.replace(models.PRESETS['gpt2_mini'], vocab_size=w.vocab,
                            num_layers=w.layers, hidden_size=w.hidden, num_heads=w.heads,
                            intermediate_size=w.ffn, max_position_embeddings=w.length,
                            pad_token_id=0, dropout=dropout, attention_dropout=dropout)
  return models.GPTForCausalLM(cfg), objectives.causal_lm()


def jax_state(model: Any, batch: dict[str, Any], seed: int = 0) -> Any:
  """A fresh train state with the benchmark's AdamW."""
  import jax
  import optax
  from jaxpretrain import finetune
  return finetune.create_state(model, finetune.identity(),
                               tx=optax.adamw(LR, weight_decay=WEIGHT_DECAY),
                               rng=jax.random.PRNGKey(seed), example_batch=batch)


def _op_kinds(hlo: str, vocab: int) -> dict[str, str]:
  """What each instruction of an optimised HLO module does, in the terms of the profile table.

  Judged by the operations inside it, its shape and the source it came from (the
  Flax module path in its `op_name`).
  """
  kinds = {}
  for name, rest, body in common.hlo_instructions(hlo, strip_layouts=True):
    shape = rest[:rest.index(')') + 1] if rest.startswith('(') else rest.split(' ')[0]
    source = (re.findall(r'op_name="([^"]*)"', rest) or [''])[0]
    op = lambda *names: common.has_op(body, *names)
    if op('dot', 'convolution'):
      kind = ('matmuls: vocabulary projection' if str(vocab) in rest + body else
              'matmuls: attention scores and values' if '->' in source else
              'matmuls: dense layers')
    elif 'ropout' in source or op('xor', 'shift-right-logical', 'rng-bit-generator'):
      kind = 'dropout: random bits and masks; masking for MLM'
    elif shape.startswith('(') and 's32' in shape and op('reduce'):
      kind = 'argmax (accuracy metric)'
    elif str(vocab) in shape:
      kind = 'vocabulary-sized: softmax, cross-entropy, embedding and bias gradients'
    elif 'norm' in source:
      kind = 'LayerNorm'
    elif '/mlp/' in source:
      kind = 'GELU'
    elif '/attention/' in source:
      kind = 'attention: mask, softmax, transposes'
    elif 'jvp' not in source:
      kind = 'AdamW, gradient norm'
    else:
      kind = 'other: embeddings, residual sums, ...'
    kinds[name] = kind
  return kinds


def _jax_program(w: Workload, variant: Variant, batch: dict[str, Any]) -> tuple[Any, Any, float]:
  """The variant's compiled step, its initial state, and the seconds compilation took.

  The variant's PRNG settings and stock pieces are in force only while the step
  is traced, so that programs of several variants can share a process.
  """
  import jax
  from jaxpretrain.step import make_train_step

  def configure(v: Variant) -> None:
    jax.config.update('jax_default_prng_impl', v.prng)
    jax.config.update('jax_threefry_partitionable', v.partitionable)

  pieces = _stock_pieces()
  originals = {name: getattr(module, attr) for name, (module, attr, _) in pieces.items()}
  configure(variant)
  for name in variant.stock:
    module, attr, stock = pieces[name]
    setattr(module, attr, stock)
  try:
    model, objective = jax_model(w, dropout=variant.dropout)
    state = jax_state(model, batch)
    start = time.perf_counter()
    compiled = jax.jit(make_train_step(objective), donate_argnums=0).lower(state, batch).compile()
    return compiled, state, time.perf_counter() - start
  finally:
    configure(VARIANTS['default'])
    for name, (module, attr, _) in pieces.items():
      setattr(module, attr, originals[name])


def jax_worker(w: Workload, steps: int, warmup: int, variant: Variant = VARIANTS['default'], *,
               paired: bool = False, profile: bool = False) -> dict[str, Any]:
  """Trains `steps` timed steps after `warmup` ones; returns the measurements.

  With `paired`, the default program trains alongside in the same process, the
  two taking turns step by step, so that both see the same machine.
  """
  if variant.xla_flags:
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {variant.xla_flags}"
  import jax

  batches = jax_batches(w)
  baseline = common.rss_mb()
  programs = [_jax_program(w, v, batches[0])
              for v in ([variant, VARIANTS['default']] if paired else [variant])]
  states = [state for _, state, _ in programs]
  losses = [[] for _ in programs]
  times = [[] for _ in programs]

  def step(k: int, i: int) -> None:
    states[k], metrics = programs[k][0](states[k], batches[i % len(batches)])
    losses[k].append(jax.block_until_ready((states[k], metrics))[1]['loss'])

  def each(i: int) -> None:
    for k in range(len(programs)):
      start = time.perf_counter()
      step(k, i)
      times[k].append(time.perf_counter() - start)

  _, _, memory = common.timed_steps(each, warmup, steps, baseline)
  timed = [t[warmup:] for t in times]
  compiled = programs[0][0]
  result = dict(times=timed[0], compile_s=programs[0][2], **memory,
                xla_temp_mb=[p.memory_analysis().temp_size_in_bytes / 2 ** 20
                             for p, _, _ in programs],
                params=sum(x.size for x in jax.tree.leaves(states[0].params)),
                losses=[float(losses[0][0]), float(losses[0][-1])],
                xla_flops=common.xla_flops(compiled),
                threads=f'XLA:CPU, {os.cpu_count()} cores, PRNG {variant.prng}')
  if paired:
    result['default_times'] = timed[1]
  if profile:
    result['profile'] = common.profile(lambda i: step(0, i), 3,
                                       _op_kinds(compiled.as_text(), w.vocab),
                                       other='other: embeddings, residual sums, ...')
  return result


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_worker(w: Workload, steps: int, warmup: int, threads: int) -> dict[str, Any]:
  """Hugging Face's model of the same shape, trained eagerly; returns the measurements."""
  import torch
  import transformers
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(4):
    ids = _token_ids(w, rng)
    inputs, labels = _mask_for_torch(ids, w, rng) if w.masked else (ids, ids)
    batch = {'input_ids': torch.from_numpy(inputs), 'labels': torch.from_numpy(labels),
             'attention_mask': torch.ones(w.batch, w.length, dtype=torch.int64)}
    if w.masked:
      batch['token_type_ids'] = torch.zeros(w.batch, w.length, dtype=torch.int64)
    batches.append(batch)
  baseline = common.rss_mb()
  if w.masked:
    config = transformers.BertConfig(
        vocab_size=w.vocab, hidden_size=w.hidden, num_hidden_layers=w.layers,
        num_attention_heads=w.heads, intermediate_size=w.ffn, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1)
    model = transformers.BertForMaskedLM(config)
  else:
    config = transformers.GPT2Config(
        vocab_size=w.vocab, n_positions=w.length, n_embd=w.hidden, n_layer=w.layers,
        n_head=w.heads, n_inner=w.ffn, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    model = transformers.GPT2LMHeadModel(config)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  losses = []

  def step(i: int) -> None:
    loss = model(**batches[i % len(batches)]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(loss.item())

  _, times, memory = common.timed_steps(step, warmup, steps, baseline)
  return dict(times=times, compile_s=None, **memory,
              params=sum(p.numel() for p in model.parameters()), losses=[losses[0], losses[-1]],
              threads=f'{torch.get_num_threads()} intra-op threads, '
                      f'attention {model.config._attn_implementation}')


# ---------------------------------------------------------------------------------------------
# Driver


def measure(names: list[str], rounds: int, steps: int, warmup: int, threads: int
            ) -> tuple[dict, dict]:
  """All runs, frameworks alternating; returns the runs and the matmul timings."""
  runs = {(f, n): [] for n in names for f in ('jax', 'torch')}
  matmuls = {lib: [] for lib in common.LIBRARIES}
  for r in range(rounds):
    common.spawn_matmuls(__file__, matmuls)
    for name in names:
      for framework in (('jax', 'torch') if r % 2 == 0 else ('torch', 'jax')):
        result = common.spawn(__file__, ['--worker', framework, '--workload', name, '--steps',
                                         str(steps), '--warmup', str(warmup), '--threads',
                                         str(threads)])
        print(f'round {r}, {framework}, {name}: median step '
              f'{statistics.median(result["times"]):.3f} s', file=sys.stderr)
        runs[(framework, name)].append(result)
  return runs, matmuls


def table(runs: dict, matmuls: dict, names: list[str]) -> str:
  """The Markdown table of the runs against the matmul peak."""
  peaks = common.matmul_peaks(matmuls)
  lines = ['| framework | workload | tokens/s | speed-up vs PyTorch | compile | '
           'peak memory: run (timed steps) | useful GFLOP/s | % of matmul peak: JAX (best) | '
           'loss: first, last step |',
           '|---|---|---|---|---|---|---|---|---|']
  notes = []
  for name in names:
    w = WORKLOADS[name]
    speed = {}
    for framework in ('torch', 'jax'):
      results = runs[(framework, name)]
      step_s = common.median_step(results)
      speed[framework] = w.batch * w.length / step_s
      flops = useful_flops(w) / step_s
      label = {'jax': 'JAX (jaxpretrain)', 'torch': 'PyTorch eager (HF)'}[framework]
      lines.append(
          f"| {label} | {w.title} | {speed[framework]:,.0f} | "
          f"{speed[framework] / speed['torch']:.2f}× | {common.compile_cell(results)} | "
          f"{common.memory_cell(results)} | {flops / 1e9:.1f} | "
          f"{common.peak_share(flops, peaks)} | "
          f"{results[0]['losses'][0]:.2f}, {results[0]['losses'][1]:.2f} |")
      notes.append(f'{label}, {w.title}: {results[0]["params"]:,} parameters, '
                   f'{results[0]["threads"]}, {len(results)} run(s) of '
                   f'{len(results[0]["times"])} timed steps, median step {step_s:.3f} s'
                   + (f'; XLA counts {results[0]["xla_flops"] / 1e9:.0f} GFLOP per step and '
                      f'{results[0]["xla_temp_mb"][0]:.0f} MB of temporary buffers'
                      if framework == 'jax' else ''))
  lines += ['', 'Useful GFLOP per step: '
            + ', '.join(f'{WORKLOADS[n].title} {useful_flops(WORKLOADS[n]) / 1e9:.1f}'
                        for n in names) + '.',
            *common.machine_lines(matmuls), '',
            *[f'- {n}' for n in notes]]
  return '\n'.join(lines)


def breakdown(names: list[str], variants: list[str], rounds: int, steps: int,
              warmup: int) -> str:
  """JAX's step under each variant against the default; a Markdown table.

  A variant without XLA flags trains in the same process as the default, the
  two taking turns step by step; flags hold for a whole process, so a variant
  with flags and the default take turns in separate processes.
  """
  lines = ['| workload | JAX variant | step: default → variant | speed-up | '
           'XLA temporary buffers: default → variant | loss: first, last step | compared |',
           '|---|---|---|---|---|---|---|']
  for name in names:
    w = WORKLOADS[name]
    for v in variants:
      variant, ours, theirs = VARIANTS[v], [], []
      for r in range(rounds):
        args = ['--worker', 'jax', '--workload', name, '--steps', str(steps), '--warmup',
                str(warmup)]
        if variant.xla_flags:
          pair = [['--variant', 'default'], ['--variant', v]][::1 if r % 2 == 0 else -1]
          for extra in pair:
            (ours if extra[1] == v else theirs).append(common.spawn(__file__, args + extra))
        else:
          ours.append(common.spawn(__file__, args + ['--variant', v, '--paired']))
          theirs.append(dict(times=ours[-1]['default_times'],
                             xla_temp_mb=ours[-1]['xla_temp_mb'][1:]))
      default_s, variant_s = common.median_step(theirs), common.median_step(ours)
      print(f'{name}, {v}: {default_s:.3f} s -> {variant_s:.3f} s', file=sys.stderr)
      lines.append(
          f'| {w.title} | {variant.what} | {1000 * default_s:.0f} → {1000 * variant_s:.0f} ms | '
          f'{default_s / variant_s:.2f}× | '
          f"{theirs[0]['xla_temp_mb'][0]:.0f} → {ours[0]['xla_temp_mb'][0]:.0f} MB | "
          f"{ours[0]['losses'][0]:.2f}, {ours[0]['losses'][1]:.2f} | "
          f"{'separate processes' if variant.xla_flags else 'same process'} |")
  lines += ['', f'Each row: {rounds} run(s) of {steps} timed steps of each program, medians.']
  return '\n'.join(lines)


def profile(names: list[str], steps: int, warmup: int) -> str:
  """Where JAX's default step spends its time, by kind of operation; a Markdown table."""
  args = ['--profile', '--steps', str(steps), '--warmup', str(warmup)]
  results = {n: common.spawn(__file__, ['--worker', 'jax', '--workload', n, *args])['profile']
             for n in names}
  kinds = sorted({k for r in results.values() for k in r},
                 key=lambda k: -max(r.get(k, 0.0) for r in results.values()))
  lines = ['| operations | ' + ' | '.join(WORKLOADS[n].title for n in names) + ' |',
           '|---|' + '---|' * len(names)]
  for kind in kinds:
    cells = []
    for n in names:
      t, wall = results[n].get(kind, 0.0), results[n]['step (wall time)']
      cells.append(f'{1000 * t:.0f} ms' + ('' if t == wall else f' ({100 * t / wall:.0f}%)'))
    lines.append(f'| {kind} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Time per step inside XLA operations, summed over the threads that ran them '
            '(a `jax.profiler` trace of 3 steps), against the traced wall time of a step.']
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workloads', nargs='+', default=list(WORKLOADS), choices=list(WORKLOADS))
  parser.add_argument('--rounds', type=int, default=2,
                      help='measurements of each framework (or variant), in alternating order')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per measurement')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='PyTorch threads')
  parser.add_argument('--breakdown', nargs='*', choices=list(VARIANTS), metavar='VARIANT',
                      help='time JAX variants instead (default: all of ' +
                      ', '.join(VARIANTS) + ')')
  parser.add_argument('--profile', action='store_true',
                      help="profile JAX's step by kind of operation instead")
  parser.add_argument('--worker', choices=['jax', 'torch', 'matmul'], help=argparse.SUPPRESS)
  parser.add_argument('--workload', choices=list(WORKLOADS), help=argparse.SUPPRESS)
  parser.add_argument('--library', choices=['jax', 'numpy', 'torch'], help=argparse.SUPPRESS)
  parser.add_argument('--variant', choices=list(VARIANTS), default='default',
                      help=argparse.SUPPRESS)
  parser.add_argument('--paired', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == 'matmul':
    print(json.dumps(common.matmul_worker(args.library, repeats=5)))
  elif args.worker == 'jax':
    print(json.dumps(jax_worker(WORKLOADS[args.workload], args.steps, args.warmup,
                                VARIANTS[args.variant], paired=args.paired,
                                profile=args.profile)))
  elif args.worker == 'torch':
    print(json.dumps(torch_worker(WORKLOADS[args.workload], args.steps, args.warmup,
                                  args.threads)))
  elif args.breakdown is not None:
    variants = [v for v in args.breakdown or VARIANTS if v != 'default']
    print(breakdown(args.workloads, variants, args.rounds, args.steps, args.warmup))
  elif args.profile:
    print(profile(args.workloads, args.steps, args.warmup))
  else:
    runs, matmuls = measure(args.workloads, args.rounds, args.steps, args.warmup, args.threads)
    print(table(runs, matmuls, args.workloads))


if __name__ == '__main__':
  main()
