"""Masked LM on the plays: jaxpretrain's BERT-mini against Hugging Face's, step for step.

  python benchmarks/mlm_reference.py --steps 500 --every 250

Both frameworks train BERT-mini as `configs/shakespeare_bert_mlm.py` does: its
data, WordPiece tokenizer (trained and saved in `--workdir`), batch, dropout,
AdamW with its weight decay, and warm-up then cosine decay over the config's
`train.steps` (stopping after `--steps` of them). They see the same rows in the
same order, each masked by `objectives.mlm_task` (15%, 80/10/10) with draws of
their own. PyTorch trains `transformers.BertForMaskedLM` eagerly in float32.
Every `--every` steps both are scored on the same fixed masks of the validation
plays: mean loss per masked token and the share predicted right. If the two
curves agree, a plateau of the masked-LM loss belongs to the data and schedule,
not to jaxpretrain. Prints a Markdown table.
"""

import argparse
import math
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import build, config as config_lib, finetune, loop, objectives
from jaxpretrain.data import text_runs
from jaxpretrain.data.pipeline import eval_batches, train_loader
from jaxpretrain.step import make_train_step

CONFIG = 'configs/shakespeare_bert_mlm.py'


def _task(cfg, tokenizer) -> objectives.TokenTask:
  """The masking of the run's objective, to mask PyTorch's batches and the validation plays."""
  return objectives.mlm_task(rate=cfg.objective.rate,
                             **build.token_kwargs('masked_lm', tokenizer))


def _masked(task, batch, key):
  """Masked inputs, and the targets and weights at the (B, M) masked positions, as numpy."""
  inputs, targets, weights = task.prepare({k: jnp.asarray(v) for k, v in batch.items()}, key)
  return ({k: np.asarray(v) for k, v in inputs.items()}, np.asarray(targets),
          np.asarray(weights))


def _torch_labels(inputs, targets, weights) -> np.ndarray:
  """Hugging Face's labels: the target at each masked position, -100 elsewhere."""
  labels = np.full(inputs['input_ids'].shape, -100, np.int64)
  rows, slots = np.nonzero(weights > 0)
  labels[rows, inputs['masked_positions'][rows, slots]] = targets[rows, slots]
  return labels


class JaxSide:
  """jaxpretrain's BERT-mini, trained by `make_train_step` as a pre-training run does."""

  def __init__(self, cfg, tokenizer, example):
    self.model = build.model(cfg.model)
    tx = build.optimizer(cfg.optimizer, cfg.train.steps)
    self.state = finetune.create_state(self.model, finetune.identity(), tx=tx,
                                       rng=jax.random.PRNGKey(cfg.seed), example_batch=example)
    objective = build.objective(cfg.objective, tokenizer=tokenizer)
    self.step = jax.jit(make_train_step(objective), donate_argnums=0)
    self.score = jax.jit(lambda params, batch: self.model.apply(
        {'params': params}, batch, train=False))

  def train(self, batch) -> float:
    self.state, metrics = self.step(self.state, batch)
    return float(metrics['loss'])

  def nll_and_hits(self, inputs, targets, weights) -> tuple[float, float]:
    out = self.score(self.state.all_params(),
                     {**inputs, 'targets': targets, 'target_weights': weights})
    return float(out['nll_sum']), float(np.sum(np.asarray(out['hits']) * weights))


class TorchSide:
  """Hugging Face's BertForMaskedLM of the same shape, with the same optimizer and schedule."""

  def __init__(self, cfg, shape, threads: int):
    """`shape`: the `TransformerConfig` of the JAX model, copied."""
    import torch
    import transformers
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    self.model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size, hidden_dropout_prob=shape.dropout,
        attention_probs_dropout_prob=shape.attention_dropout,
        max_position_embeddings=shape.max_position_embeddings, pad_token_id=shape.pad_token_id))
    opt = cfg.optimizer
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.lr,
                                       weight_decay=opt.weight_decay)
    warmup, total = opt.warmup_steps, cfg.train.steps
    # optax's warm-up then cosine decay, as `build.learning_rate` joins them.
    self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: (
        i / warmup if i < warmup
        else 0.5 * (1 + math.cos(math.pi * min(i - warmup, total - warmup) / (total - warmup)))))

  def _tensors(self, inputs, labels=None):
    t = {k: self.torch.from_numpy(np.asarray(inputs[k], np.int64))
         for k in ('input_ids', 'attention_mask', 'token_type_ids')}
    if labels is not None:
      t['labels'] = self.torch.from_numpy(labels)
    return t

  def train(self, inputs, labels) -> float:
    self.model.train()
    loss = self.model(**self._tensors(inputs, labels)).loss
    loss.backward()
    self.optimizer.step()
    self.schedule.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.item()

  def nll_and_hits(self, inputs, labels) -> tuple[float, float]:
    self.model.eval()
    with self.torch.no_grad():
      logits = self.model(**self._tensors(inputs)).logits
    target = self.torch.from_numpy(labels)
    nll = self.torch.nn.functional.cross_entropy(logits.transpose(1, 2), target,
                                                 ignore_index=-100, reduction='sum')
    hits = ((logits.argmax(-1) == target) & (target >= 0)).sum()
    return nll.item(), hits.item()


def main(steps: int, every: int, workdir: pathlib.Path, threads: int) -> str:
  # The run's tokenizer, and the model sized to it, as `jaxpretrain pretrain` makes them.
  cfg, tokenizer = loop.with_tokenizer(config_lib.load(CONFIG), workdir)
  train = text_runs.text_source(cfg.data, cfg.data.train_split, tokenizer)
  task = _task(cfg, tokenizer)
  val_key = jax.random.PRNGKey(1)
  validation = [_masked(task, batch, jax.random.fold_in(val_key, j)) for j, batch in enumerate(
      eval_batches(text_runs.text_source(cfg.data, cfg.data.validation_split, tokenizer),
                   batch_size=cfg.data.eval_batch_size))]
  validation = [(inputs, targets, weights, _torch_labels(inputs, targets, weights))
                for inputs, targets, weights in validation]
  masked = sum(float(w.sum()) for _, _, w, _ in validation)
  loader = train_loader(train, batch_size=cfg.data.batch_size, seed=cfg.seed)
  first = next(loader)
  jax_side = JaxSide(cfg, tokenizer, first)
  torch_side = TorchSide(cfg, jax_side.model.config, threads)
  mask_key = jax.random.PRNGKey(2)
  lines = ['| step | JAX train loss | PyTorch train loss | JAX validation loss (right) | '
           'PyTorch validation loss (right) |', '|---|---|---|---|---|']
  batch = first
  for i in range(1, steps + 1):
    batch = {k: np.asarray(v) for k, v in batch.items()}
    jax_loss = jax_side.train(batch)
    inputs, targets, weights = _masked(task, batch, jax.random.fold_in(mask_key, i))
    torch_loss = torch_side.train(inputs, _torch_labels(inputs, targets, weights))
    if i % every == 0 or i == steps:
      jax_val = np.sum([jax_side.nll_and_hits(inp, t, w) for inp, t, w, _ in validation], 0)
      torch_val = np.sum([torch_side.nll_and_hits(inp, lab) for inp, _, _, lab in validation], 0)
      lines.append(f'| {i} | {jax_loss:.3f} | {torch_loss:.3f} | {jax_val[0] / masked:.3f} '
                   f'({jax_val[1] / masked:.1%}) | {torch_val[0] / masked:.3f} '
                   f'({torch_val[1] / masked:.1%}) |')
      print(lines[-1], flush=True)
    batch = next(loader)
  lines += ['', f'{CONFIG}, {steps} of its {cfg.train.steps} scheduled steps; validation over '
            f'{masked:.0f} masked tokens of the validation plays. Machine: {platform.machine()}, '
            f'PyTorch with {threads} threads.']
  return '\n'.join(lines)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--every', type=int, default=250)
  parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('runs/mlm_reference'))
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  print(main(args.steps, args.every, args.workdir, args.threads))
