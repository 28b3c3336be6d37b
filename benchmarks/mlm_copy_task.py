"""Can masked LM train attention from scratch? A copy task only attention solves.

  python benchmarks/mlm_copy_task.py --steps 1500

Each row is [CLS] x x [SEP] for a fresh random sequence x of 15 tokens, so a
masked token is known exactly from its twin in the other half and not at all
from token frequencies (uniform over the vocabulary). A tiny BERT (2 layers,
hidden 32) trains with `objectives.masked_lm` (15%, 80/10/10) and Adam 1e-3;
the loss starts at log V and stays near it until attention finds the twin.
Prints the loss and accuracy every `--every` steps, a Markdown table.
"""

import argparse
import dataclasses

import jax
import numpy as np
import optax

from jaxpretrain import finetune, objectives
from jaxpretrain.models import PRESETS, BertForMaskedLM
from jaxpretrain.step import make_train_step

VOCAB, PAD, CLS, SEP, MASK = 101, 0, 1, 2, 3
CONFIG = dataclasses.replace(
    PRESETS['bert_tiny'], vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
    intermediate_size=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
    pad_token_id=PAD)


def copy_batch(seed: int, rows: int = 32, half: int = 15) -> dict[str, np.ndarray]:
  """Rows of [CLS] x x [SEP], x uniform over the non-special tokens."""
  x = np.random.default_rng(seed).integers(4, VOCAB, (rows, half)).astype(np.int32)
  ids = np.concatenate([np.full((rows, 1), CLS), x, x, np.full((rows, 1), SEP)], axis=1)
  return {'input_ids': ids.astype(np.int32), 'attention_mask': np.ones_like(ids, np.int32)}


def main(steps: int, every: int) -> str:
  objective = objectives.masked_lm(mask_id=MASK, vocab_size=VOCAB,
                                   special_ids=(PAD, CLS, SEP, MASK))
  state = finetune.create_state(BertForMaskedLM(CONFIG), finetune.identity(),
                                tx=optax.adam(1e-3), rng=jax.random.PRNGKey(0),
                                example_batch=copy_batch(0))
  step = jax.jit(make_train_step(objective), donate_argnums=0)
  lines = [f'log V = {np.log(VOCAB):.2f}', '', '| step | loss | accuracy |', '|---|---|---|']
  for i in range(1, steps + 1):
    state, metrics = step(state, copy_batch(i))
    if i % every == 0 or i == steps:
      lines.append(f'| {i} | {float(metrics["loss"]):.3f} | {float(metrics["accuracy"]):.1%} |')
      print(lines[-1], flush=True)
  return '\n'.join(lines)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--every', type=int, default=250)
  args = parser.parse_args()
  print(main(args.steps, args.every))
