"""Text datasets by name for config-driven runs, with the tokenizer each run owns.

A text run's `data` section names one of `TEXT_DATASETS` and a `tokenizer`
section. Pre-training trains the tokenizer on the pre-training corpus and saves
it as `tokenizer.json` in the work directory, next to the checkpoints; a
fine-tuning run reads it from there (`tokenizer.path`, usually the pre-training
work directory), so both see the same token ids.
"""

from collections.abc import Callable
import logging
import pathlib

import ml_collections
import tokenizers as hf_tokenizers

from jaxpretrain.data import text, tokenizers
from jaxpretrain.data.errors import UnknownDatasetError
from jaxpretrain.data.sources import InMemory, Source

Config = ml_collections.ConfigDict
Tokenizer = hf_tokenizers.Tokenizer

TRAINERS: dict[str, Callable[..., Tokenizer]] = {
    'wordpiece': tokenizers.train_wordpiece,
    'bpe': tokenizers.train_bpe,
}

# name → (split, tokenizer, data config) → source of model-ready int32 arrays.
TEXT_DATASETS: dict[str, Callable[[str, Tokenizer, Config], Source]] = {
    'shakespeare_mlm': lambda split, tok, cfg: InMemory(text.mlm_sequences(
        tok, text.pretraining_texts(split), cfg.seq_len)),
    'shakespeare_lm': lambda split, tok, cfg: InMemory(text.lm_sequences(
        tok, text.pretraining_texts(split), cfg.seq_len)),
    'shakespeare_genre': lambda split, tok, cfg: text.tokenize_source(
        tok, text.genre_passages(split, words=cfg.get('words', 64)), cfg.seq_len),
}


def is_text(cfg: Config) -> bool:
  """Whether a data section names a text dataset of this module."""
  return cfg.name in TEXT_DATASETS


def run_tokenizer(cfg: Config, workdir: str | pathlib.Path) -> Tokenizer:
  """The run's tokenizer: `tokenizer.path`'s, the work directory's, or a new one.

  A new one is trained on the pre-training plays (`tokenizer.kind`, `vocab_size`)
  and saved in `workdir`, so a resumed run and later fine-tuning reuse it.
  """
  tok_cfg = cfg.tokenizer
  if tok_cfg.get('path'):
    return tokenizers.load(tok_cfg.path)
  saved = pathlib.Path(workdir) / 'tokenizer.json'
  if saved.exists():
    return tokenizers.load(saved)
  if tok_cfg.kind not in TRAINERS:
    raise UnknownDatasetError(f'unknown tokenizer.kind {tok_cfg.kind!r}; choose one of '
                              f'{sorted(TRAINERS)}')
  logging.info('training a %s tokenizer of %d tokens on the pre-training plays', tok_cfg.kind,
               tok_cfg.vocab_size)
  tokenizer = TRAINERS[tok_cfg.kind](text.pretraining_texts('train'), tok_cfg.vocab_size)
  tokenizers.save(tokenizer, workdir)
  return tokenizer


def text_source(cfg: Config, split: str, tokenizer: Tokenizer) -> Source:
  """The split of the text dataset `cfg.name`, tokenized for the model."""
  if cfg.name not in TEXT_DATASETS:
    raise UnknownDatasetError(f'unknown text dataset {cfg.name!r}; choose one of '
                              f'{sorted(TEXT_DATASETS)}')
  return TEXT_DATASETS[cfg.name](split, tokenizer, cfg)
