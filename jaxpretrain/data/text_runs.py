"""Text datasets by name for config-driven runs, with the tokenizer each run owns.

A text run's `data` section names one of `TEXT_DATASETS`, or a TFDS text dataset
as `tfds:<name>` (`tfds:imdb_reviews`, `tfds:tiny_shakespeare`, `tfds:glue/sst2`),
and says which task it feeds in `task`, one of `TASKS`:

* `'mlm'`: each text cut into `[CLS] … [SEP]` rows (`text.mlm_sequences`);
* `'lm'`: the texts packed into rows for causal LM (`text.lm_sequences`);
* `'classification'`: each text one example with its label (`text.tokenize_source`).

A built-in name fixes its task (`shakespeare_genre` is classification); a `tfds:`
name needs `task`, and reads the features `text_key` (default `'text'`) and, for
classification, `label_key` (default `'label'`) of the prepared dataset in
`data_dir` (see `text_tfds`). A `tfds:` name without `task` is an image dataset of
the catalogue.

Pre-training trains the tokenizer on the training texts (the training plays, or
the `train_split` texts of the TFDS dataset) and saves it as `tokenizer.json` in
the work directory, next to the checkpoints; a fine-tuning run reads it from there
(`tokenizer.path`, usually the pre-training work directory), so both see the same
token ids.
"""

from collections.abc import Callable
import logging
from typing import NamedTuple

import ml_collections
import numpy as np
import tokenizers as hf_tokenizers

from jaxpretrain import paths
from jaxpretrain.data import text, text_tfds, tokenizers
from jaxpretrain.data.catalogue import TFDS_PREFIX
from jaxpretrain.data.errors import UnknownDatasetError
from jaxpretrain.data.sources import InMemory, Source
from jaxpretrain.errors import ConfigError

Config = ml_collections.ConfigDict
Tokenizer = hf_tokenizers.Tokenizer

TRAINERS: dict[str, Callable[..., Tokenizer]] = {
    'wordpiece': tokenizers.train_wordpiece,
    'bpe': tokenizers.train_bpe,
}


def _texts(examples: InMemory) -> list[str]:
  return [str(t) for t in examples.arrays['text']]


# task → (tokenizer, examples with `text` (and `label`), data config) → source of
# model-ready int32 arrays.
TASKS: dict[str, Callable[[Tokenizer, InMemory, Config], Source]] = {
    'mlm': lambda tok, ex, cfg: InMemory(text.mlm_sequences(tok, _texts(ex), cfg.seq_len)),
    'lm': lambda tok, ex, cfg: InMemory(text.lm_sequences(tok, _texts(ex), cfg.seq_len)),
    'classification': lambda tok, ex, cfg: text.tokenize_source(tok, ex, cfg.seq_len),
}


class TextDataset(NamedTuple):
  """A built-in text dataset: the task it feeds and its examples by (split, data config)."""
  task: str
  examples: Callable[[str, Config], InMemory]


def _documents(texts: list[str]) -> InMemory:
  # Object arrays: a fixed-width string array would pad every play to the longest.
  return InMemory({'text': np.array(texts, dtype=object)})


def _split_by(cfg: Config) -> str:
  return cfg.get('split_by') or 'section'


def _plays(split: str, cfg: Config) -> InMemory:
  return _documents(text.pretraining_texts(split, by=_split_by(cfg)))


TEXT_DATASETS: dict[str, TextDataset] = {
    'shakespeare_mlm': TextDataset('mlm', _plays),
    'shakespeare_lm': TextDataset('lm', _plays),
    'shakespeare_genre': TextDataset(
        'classification', lambda split, cfg: text.genre_passages(
            split, words=cfg.get('words', 64), by=_split_by(cfg))),
}


def _is_tfds(cfg: Config) -> bool:
  return cfg.name.startswith(TFDS_PREFIX)


def is_text(cfg: Config) -> bool:
  """Whether a data section names a text dataset: a built-in one, or `tfds:` with a `task`."""
  return cfg.name in TEXT_DATASETS or (_is_tfds(cfg) and bool(cfg.get('task')))


def task(cfg: Config) -> str:
  """The task a text data section feeds (one of `TASKS`).

  Raises:
    ConfigError: `task` is not one of `TASKS`, or contradicts a built-in dataset.
    UnknownDatasetError: the name is neither built in nor `tfds:<name>`.
  """
  given = cfg.get('task') or ''
  if cfg.name in TEXT_DATASETS:
    own = TEXT_DATASETS[cfg.name].task
    if given and given != own:
      others = [n for n, d in TEXT_DATASETS.items() if d.task == given]
      hint = f' (for {given!r}, name {", ".join(others)})' if others else ''
      raise ConfigError(f'data.task={given!r}, but {cfg.name!r} feeds {own!r}; set '
                        f'data.task={own!r} or leave it empty{hint}.')
    return own
  if not _is_tfds(cfg):
    raise UnknownDatasetError(
        f'unknown text dataset {cfg.name!r}; choose one of {sorted(TEXT_DATASETS)}, or a '
        f"TFDS text dataset as '{TFDS_PREFIX}<name>' with data.task one of {sorted(TASKS)}")
  if given not in TASKS:
    raise ConfigError(f'data.task={given!r} for {cfg.name!r}; choose one of {sorted(TASKS)}')
  return given


def _examples(cfg: Config, split: str, kind: str) -> InMemory:
  """The split's texts (and labels) before tokenizing, for the task `kind` (`task(cfg)`)."""
  if cfg.name in TEXT_DATASETS:
    return TEXT_DATASETS[cfg.name].examples(split, cfg)
  return InMemory(text_tfds.read_texts(
      cfg.name[len(TFDS_PREFIX):], split, data_dir=cfg.get('data_dir') or None,
      text_key=cfg.get('text_key') or 'text',
      label_key=(cfg.get('label_key') or 'label') if kind == 'classification' else None))


def tokenizer_texts(cfg: Config) -> list[str]:
  """The texts a new tokenizer for this data section is trained on.

  The training text of the plays for the built-in datasets (split as
  `split_by` says); the `train_split` texts of a TFDS dataset.
  """
  if cfg.name in TEXT_DATASETS:
    return text.pretraining_texts('train', by=_split_by(cfg))
  return _texts(_examples(cfg, cfg.train_split, task(cfg)))


def run_tokenizer(cfg: Config, workdir: paths.PathLike) -> Tokenizer:
  """The run's tokenizer: `tokenizer.path`'s, the work directory's, or a new one.

  A new one is trained on `tokenizer_texts(cfg)` (`tokenizer.kind`, `vocab_size`)
  and saved in `workdir`, so a resumed run and later fine-tuning reuse it.
  """
  tok_cfg = cfg.tokenizer
  if tok_cfg.get('path'):
    return tokenizers.load(tok_cfg.path)
  saved = paths.as_path(workdir) / 'tokenizer.json'
  if saved.exists():
    return tokenizers.load(saved)
  if tok_cfg.kind not in TRAINERS:
    raise UnknownDatasetError(f'unknown tokenizer.kind {tok_cfg.kind!r}; choose one of '
                              f'{sorted(TRAINERS)}')
  texts = tokenizer_texts(cfg)
  logging.info('training a %s tokenizer of %d tokens on %d texts of %s', tok_cfg.kind,
               tok_cfg.vocab_size, len(texts), cfg.name)
  tokenizer = TRAINERS[tok_cfg.kind](texts, tok_cfg.vocab_size)
  tokenizers.save(tokenizer, workdir)
  return tokenizer


def text_source(cfg: Config, split: str, tokenizer: Tokenizer) -> Source:
  """The split of the text dataset `cfg.name`, tokenized for the model as `task(cfg)` says."""
  kind = task(cfg)
  return TASKS[kind](tokenizer, _examples(cfg, split, kind), cfg)
