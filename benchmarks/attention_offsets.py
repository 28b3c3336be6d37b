"""Where a language model's attention heads look: the weight on nearby tokens.

  python benchmarks/attention_offsets.py configs/shakespeare_bert_mlm.py runs/shakespeare/pretrain
  python benchmarks/attention_offsets.py configs/shakespeare_gpt_clm.py runs/shakespeare/lm

For 64 validation rows of a Shakespeare pre-training run (its config file and
work directory, which holds its checkpoint and tokenizer), each head's attention
probabilities (as the model sows them in `intermediates`) are averaged over
real (not padding) queries at each offset -2..+2 from the query (causal
models: -3..0). A head that reads its neighbours puts far more than 1/keys
there; one that ignores order spreads like the uniform weight, shown beside.
Also prints each head's mean entropy. A Markdown table.
"""

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxpretrain import build, checkpoint, loop
from jaxpretrain.config import import_file
from jaxpretrain.data import load_split
from jaxpretrain.models.transformer import Transformer, make_attention_mask
from text_layer_probe import INPUTS

ROWS = 64


def attention_probs(config, params: dict, batch: dict) -> list[np.ndarray]:
  """Each block's (B, H, L, L) attention probabilities, as the model sows them."""
  _, state = Transformer(config).apply({'params': params}, batch, train=False,
                                       mutable=['intermediates'])
  return [np.asarray(state['intermediates'][f'layer_{i}']['attention']['attention_probs'][0])
          for i in range(config.num_layers)]


def main(config_file: str, workdir: pathlib.Path) -> str:
  cfg = import_file(config_file).get_config(None)
  cfg.data.tokenizer.path = str(workdir)
  cfg, tokenizer = loop.with_tokenizer(cfg, workdir)
  _, val = (load_split(s) for s in loop.run_splits(cfg, tokenizer))
  batch = {k: jnp.asarray(v[:ROWS]) for k, v in val.items() if k in INPUTS}
  # The run's own model, as its manifest records it, not today's config file's.
  config = build.model(ConfigDict(checkpoint.read_manifest(workdir)['config']['model'])).config
  params = checkpoint.restore_params(workdir, step='latest')['encoder']
  offsets = range(-3, 1) if config.causal else range(-2, 3)
  mask_Bx1xLxL = make_attention_mask(batch['attention_mask'], causal=config.causal)
  keys_BxL = np.asarray(mask_Bx1xLxL).sum(-1)[:, 0]  # keys each query sees
  # Real queries far enough from both ends to have every offset as a real token: padding
  # ends a row, so that is a query whose farthest offset still falls on a real token.
  queries_Q = np.arange(3, keys_BxL.shape[1] - 3)
  real_BxQ = np.asarray(batch['attention_mask'])[:, queries_Q + max(offsets)].astype(bool)
  mean = lambda x_BxQ: x_BxQ[real_BxQ].mean()
  uniform = mean(1 / keys_BxL[:, queries_Q])
  lines = ['| layer, head | entropy (nats) | ' + ' | '.join(f'{o:+d}' for o in offsets)
           + ' | uniform |', '|---|---:|' + '---:|' * (len(offsets) + 1)]
  for layer, probs in enumerate(attention_probs(config, params, batch)):
    for head in range(config.num_heads):
      p_BxLxL = probs[:, head]
      entropy = mean(-(p_BxLxL * np.log(np.where(p_BxLxL > 0, p_BxLxL, 1.0))).sum(-1)[:, queries_Q])
      cells = [mean(p_BxLxL[:, queries_Q, queries_Q + o]) for o in offsets]
      lines.append(f'| {layer}, {head} | {entropy:.2f} | ' + ' | '.join(f'{c:.3f}' for c in cells)
                   + f' | {uniform:.3f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('config', help='the run\'s config file, e.g. configs/shakespeare_bert_mlm.py')
  parser.add_argument('workdir', type=pathlib.Path, help='its work directory')
  args = parser.parse_args()
  print(main(args.config, args.workdir))
