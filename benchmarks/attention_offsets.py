"""Where a language model's attention heads look: the weight on nearby tokens.

  python benchmarks/attention_offsets.py configs/shakespeare_bert_mlm.py runs/shakespeare/pretrain
  python benchmarks/attention_offsets.py configs/shakespeare_gpt_clm.py runs/shakespeare/lm

For 64 validation rows of a Shakespeare pre-training run (its config file and
work directory, which holds its checkpoint and tokenizer), each head's attention
probabilities are recomputed from the hidden states entering its layer, and
averaged over queries at each offset -2..+2 from the query (causal models:
-3..0). A head that reads its neighbours puts far more than 1/keys there; one
that ignores order spreads like the uniform weight, shown beside. Also prints
each head's mean entropy. A Markdown table.
"""

import argparse
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import build, checkpoint, loop
from jaxpretrain.config import import_file
from jaxpretrain.data import load_split
from jaxpretrain.models.transformer import alibi_bias, make_attention_mask
from text_layer_probe import INPUTS, truncated

ROWS = 64


def attention_probs(config, params: dict, layer: int, batch: dict,
                    mask_Bx1xLxL: jax.Array) -> np.ndarray:
  """(B, H, L, L) attention probabilities of block `layer`, as the model computes them."""
  encoder, kept = truncated(config, params, layer)
  hidden = encoder.apply({'params': kept}, batch, train=False)['hidden_states']
  block = params[f'layer_{layer}']
  if config.pre_norm:
    hidden = nn.LayerNorm(config.layer_norm_eps).apply(
        {'params': block['attention_norm']}, hidden)
  b, l, _ = hidden.shape
  project = lambda name: (hidden @ block['attention'][name]['kernel']
                          + block['attention'][name]['bias']).reshape(b, l, config.num_heads, -1)
  q, k = project('query'), project('key')
  scores = jnp.einsum('bqhk,bthk->bhqt', q, k) * q.shape[-1] ** -0.5
  if config.position_encoding == 'alibi':
    positions_1xL = jnp.arange(l)[None]
    scores += alibi_bias(positions_1xL, positions_1xL, config.num_heads)
  scores += jnp.where(mask_Bx1xLxL, 0.0, jnp.finfo(jnp.float32).min)
  return np.asarray(jax.nn.softmax(scores, axis=-1))


def main(config_file: str, workdir: pathlib.Path) -> str:
  cfg = import_file(config_file).get_config(None)
  cfg.data.tokenizer.path = str(workdir)
  cfg, tokenizer = loop.with_tokenizer(cfg, workdir)
  _, val = (load_split(s) for s in loop.run_splits(cfg, tokenizer))
  batch = {k: jnp.asarray(v[:ROWS]) for k, v in val.items() if k in INPUTS}
  config = build.model(cfg.model).config
  params = checkpoint.restore_params(workdir, step='latest')['encoder']
  offsets = range(-3, 1) if config.causal else range(-2, 3)
  mask_Bx1xLxL = make_attention_mask(batch['attention_mask'], causal=config.causal)
  keys_BxL = np.asarray(mask_Bx1xLxL).sum(-1)[:, 0]  # keys each query sees
  # Queries far enough from both ends to have every offset.
  queries = range(3, keys_BxL.shape[1] - 3)
  uniform = np.mean([(1 / keys_BxL[:, i]).mean() for i in queries])
  lines = ['| layer, head | entropy (nats) | ' + ' | '.join(f'{o:+d}' for o in offsets)
           + ' | uniform |', '|---|---:|' + '---:|' * (len(offsets) + 1)]
  for layer in range(config.num_layers):
    probs = attention_probs(config, params, layer, batch, mask_Bx1xLxL)
    for head in range(config.num_heads):
      p = probs[:, head]
      entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1).mean()
      cells = [np.mean([p[:, i, i + o].mean() for i in queries]) for o in offsets]
      lines.append(f'| {layer}, {head} | {entropy:.2f} | ' + ' | '.join(f'{c:.3f}' for c in cells)
                   + f' | {uniform:.3f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('config', help='the run\'s config file, e.g. configs/shakespeare_bert_mlm.py')
  parser.add_argument('workdir', type=pathlib.Path, help='its work directory')
  args = parser.parse_args()
  print(main(args.config, args.workdir))
