"""What a genre classifier could read off a masked LM's layers without fine-tuning.

  python benchmarks/text_layer_probe.py runs/shakespeare/pretrain

For the recipe's genre task (`configs/shakespeare_genre.py`, 100 labelled
passages per genre), the real tokens' hidden states after each of the encoder's
first k layers (k = 0: the embeddings) are mean-pooled, standardised, and a
logistic regression (L2 strength chosen on the validation passages) is fitted on
the training passages, for the pre-trained encoder of a `shakespeare_bert_mlm`
work directory and for the same encoder randomly initialised. Prints the
validation accuracy of each, a Markdown table, after that of a model-free
reference: the same logistic regression on the passages' tf-idf bags of tokens.
"""

import argparse
import dataclasses
import pathlib

import jax
import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression

from jaxpretrain import build, checkpoint, loop
from jaxpretrain.config import import_file
from jaxpretrain.data import load_split
from jaxpretrain.models import init_variables
from jaxpretrain.models.transformer import Transformer, pool_features

INPUTS = ('input_ids', 'attention_mask', 'token_type_ids')


def truncated(config, params: dict, layers: int) -> tuple[Transformer, dict]:
  """The encoder's embeddings and first `layers` blocks: the module and its parameters."""
  kept = {k: v for k, v in params.items()
          if not k.startswith('layer_') or int(k.split('_')[1]) < layers}
  return Transformer(dataclasses.replace(config, num_layers=layers)), kept


def pooled_states(config, params: dict, layers: int, *batches: dict,
                  chunk: int = 256) -> list[np.ndarray]:
  """For each batch, the mean of the real tokens' hidden states after `layers` blocks, (N, D)."""
  encoder, kept = truncated(config, params, layers)
  apply = jax.jit(lambda b: pool_features(
      encoder.apply({'params': kept}, b, train=False)['hidden_states'], b['attention_mask'],
      'mean'))
  return [np.concatenate([np.asarray(apply({k: v[i:i + chunk] for k, v in batch.items()
                                            if k in INPUTS}))
                          for i in range(0, len(batch['input_ids']), chunk)])
          for batch in batches]


def probe(train_x, train_y: np.ndarray, val_x, val_y: np.ndarray,
          cs: tuple[float, ...] = (0.01, 0.1, 1.0)) -> tuple[float, float]:
  """The best validation accuracy of an L2 logistic regression, and its inverse strength C."""
  fits = ((LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y).score(val_x, val_y), c)
          for c in cs)
  return max(fits)


def standardised(train_x: np.ndarray, val_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  return (train_x - mean) / std, (val_x - mean) / std


def bags_of_tokens(vocab_size: int, *batches: dict) -> list[sparse.csr_matrix]:
  """Each batch's passages as sublinear tf-idf vectors of their real tokens, idf from the first."""
  counts = []
  for batch in batches:
    rows, cols = np.nonzero(batch['attention_mask'])
    counts.append(sparse.csr_matrix((np.ones(len(rows)), (rows, batch['input_ids'][rows, cols])),
                                    shape=(len(batch['input_ids']), vocab_size)))
  tfidf = TfidfTransformer(sublinear_tf=True).fit(counts[0])
  return [tfidf.transform(c) for c in counts]


def main(pretrain_dir: pathlib.Path) -> str:
  cfg = import_file('configs/shakespeare_genre.py').get_config(None)
  cfg.data.tokenizer.path = str(pretrain_dir)
  cfg.data.labelled_per_class = 100
  # The run's own encoder, as its manifest records it, not today's config file's.
  cfg.model.transformer = checkpoint.read_manifest(pretrain_dir)['config']['model']['transformer']
  cfg, tokenizer = loop.with_tokenizer(cfg, pretrain_dir)
  train, val = (load_split(s) for s in loop.run_splits(cfg, tokenizer))
  model = build.model(cfg.model)
  example = {k: v[:2] for k, v in train.items()}
  starts = {'masked LM': checkpoint.restore_params(pretrain_dir, step='latest')['encoder'],
            'random': init_variables(model, jax.random.PRNGKey(0), example)['params']['encoder']}
  majority = np.bincount(val['label']).max() / len(val['label'])
  # tf-idf vectors are sparse and already scaled; they need weaker regularisation.
  train_bags, val_bags = bags_of_tokens(tokenizer.get_vocab_size(), train, val)
  bag_acc, bag_c = probe(train_bags, train['label'], val_bags, val['label'], cs=(1.0, 10.0, 100.0))
  lines = [f'Largest genre: {majority:.2%} of the validation passages.',
           f'tf-idf bag of tokens, no model: {bag_acc:.2%} (C={bag_c:g}).', '',
           '| layers read | ' + ' | '.join(starts) + ' |', '|---|' + '---:|' * len(starts)]
  for layers in range(model.config.num_layers + 1):
    cells = []
    for params in starts.values():
      train_x, val_x = pooled_states(model.config, params, layers, train, val)
      train_x, val_x = standardised(train_x, val_x)
      acc, c = probe(train_x, train['label'], val_x, val['label'])
      cells.append(f'{acc:.2%} (C={c:g})')
    lines.append(f'| {layers} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('pretrain_dir', type=pathlib.Path,
                      help='a shakespeare_bert_mlm work directory (checkpoint and tokenizer)')
  print(main(parser.parse_args().pretrain_dir))
