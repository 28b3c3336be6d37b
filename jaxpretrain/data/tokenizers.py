"""Hugging Face `tokenizers`: WordPiece (BERT) and byte-level BPE (GPT-2), trained on a corpus.

A tokenizer is a plain `tokenizers.Tokenizer`; it is saved as one `tokenizer.json`
beside a checkpoint, the same file public Hugging Face checkpoints ship, so `load`
reads either. `encode_batch` turns texts into the fixed-shape int32 arrays of a
text batch without changing the tokenizer's own settings (grain may call it from
several threads at once).
"""

from collections.abc import Iterable, Sequence
import os

from etils import epath
import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from jaxpretrain import paths
from jaxpretrain.errors import JaxpretrainError

FILENAME = 'tokenizer.json'
WORDPIECE_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')  # ids 0 to 4.
END_OF_TEXT = '<|endoftext|>'
# Role → token spellings, ours first, then those of common public checkpoints
# (RoBERTa / T5 style); the first one in the vocabulary wins.
_ROLES = {
    'pad': ('[PAD]', '<pad>'),
    'unk': ('[UNK]', '<unk>'),
    'cls': ('[CLS]', '<s>'),
    'sep': ('[SEP]', '</s>'),
    'mask': ('[MASK]', '<mask>'),
    'eos': (END_OF_TEXT, '</s>'),
}


class TokenizerNotFoundError(JaxpretrainError, FileNotFoundError):
  """A tokenizer file that is not where it was looked for."""


def train_wordpiece(texts: Iterable[str], vocab_size: int, *, lowercase: bool = True
                    ) -> tokenizers.Tokenizer:
  """Trains a BERT-style WordPiece tokenizer on `texts`.

  BERT normalisation (control characters removed; lowercased and accents stripped
  when `lowercase`), splitting on whitespace and punctuation, `##` marking a
  word's continuation pieces. The special tokens `[PAD]`, `[UNK]`, `[CLS]`,
  `[SEP]`, `[MASK]` have ids 0 to 4; encoding adds `[CLS] a [SEP]`, or
  `[CLS] a [SEP] b [SEP]` with token type 1 for `b`.

  Args:
    texts: the training corpus (any iterable of strings, e.g. one per document).
    vocab_size: the vocabulary size, special tokens and single characters included.
    lowercase: whether to lowercase (and strip accents), as uncased BERT.

  Returns:
    The trained tokenizer.
  """
  tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]',
                                                    continuing_subword_prefix='##'))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece(prefix='##')
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                      special_tokens=list(WORDPIECE_SPECIALS),
                                      continuing_subword_prefix='##', show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  cls, sep = tokenizer.token_to_id('[CLS]'), tokenizer.token_to_id('[SEP]')
  tokenizer.post_processor = processors.TemplateProcessing(
      single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1',
      special_tokens=[('[CLS]', cls), ('[SEP]', sep)])
  return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
  """Trains a GPT-2-style byte-level BPE tokenizer on `texts`.

  Text is split GPT-2's way (spaces attach to the following word) and encoded as
  bytes, so any string encodes without unknown tokens and decodes back exactly.
  The one special token is `<|endoftext|>`, which separates documents; encoding
  adds no special tokens.

  Args:
    texts: the training corpus.
    vocab_size: the vocabulary size, at least 257 (the 256 bytes and `<|endoftext|>`).

  Returns:
    The trained tokenizer.
  """
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  # All 256 bytes enter the vocabulary even when the corpus lacks some, so that
  # unseen characters still encode.
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  return tokenizer


def save(tokenizer: tokenizers.Tokenizer, directory: str | os.PathLike) -> epath.Path:
  """Writes `directory/tokenizer.json` (creating `directory`, local or a URI); returns its path."""
  path = paths.as_path(directory) / FILENAME
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(tokenizer.to_str(pretty=True))
  return path


def load(path: str | os.PathLike) -> tokenizers.Tokenizer:
  """Reads a tokenizer from a `tokenizer.json` file or a directory holding one.

  The directory may be one written by `save`, or a public checkpoint's (Hugging
  Face checkpoints with a fast tokenizer ship `tokenizer.json`).

  Raises:
    TokenizerNotFoundError: there is no such file.
  """
  path = paths.as_path(path)
  file = path / FILENAME if path.is_dir() else path
  if not file.is_file():
    where = f'the directory {path} has no {FILENAME}' if path.is_dir() else f'{path} does not exist'
    raise TokenizerNotFoundError(
        f'no tokenizer found: {where}. Pass a {FILENAME} file, or a directory holding one '
        f'(as written by jaxpretrain.data.tokenizers.save, or shipped with a Hugging Face '
        f'checkpoint that has a fast tokenizer).')
  return tokenizers.Tokenizer.from_str(file.read_text())


def special_ids(tokenizer: tokenizers.Tokenizer) -> dict[str, int]:
  """The ids of the special tokens the tokenizer has, by role.

  Roles: `pad`, `unk`, `cls`, `sep`, `mask`, `eos`; a role is present only when
  the tokenizer has such a token. WordPiece from `train_wordpiece` has all but
  `eos`; byte-level BPE from `train_bpe` has only `eos`. Objectives never mask or
  predict these ids.
  """
  ids = {}
  for role, spellings in _ROLES.items():
    for token in spellings:
      if (i := tokenizer.token_to_id(token)) is not None:
        ids[role] = i
        break
  return ids


def _longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Lengths after trimming a token at a time from the longer of two sequences."""
  if len_a + len_b <= budget:
    return len_a, len_b
  short = min(len_a, len_b)
  if 2 * short <= budget:
    return (budget - len_b, len_b) if len_a > len_b else (len_a, budget - len_a)
  return budget // 2, budget - budget // 2


def _plain(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """The tokenizer, or a copy without its own padding and truncation settings."""
  if tokenizer.padding is None and tokenizer.truncation is None:
    return tokenizer
  copy = tokenizers.Tokenizer.from_str(tokenizer.to_str(pretty=True))
  copy.no_padding()
  copy.no_truncation()
  return copy


def encode_batch(tokenizer: tokenizers.Tokenizer, texts: Sequence[str], max_length: int, *,
                 pair: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Encodes texts (or text pairs) into arrays of exactly `max_length` tokens.

  Texts are truncated so that, with the special tokens the tokenizer adds, they
  fit (pairs lose tokens from the longer text first), then padded at the end with
  the pad id (the end-of-text id for a tokenizer without a pad token).

  Args:
    tokenizer: any `tokenizers.Tokenizer`.
    texts: the texts, or the first texts of pairs.
    max_length: tokens per row.
    pair: the second texts of pairs (`token_type_ids` 1 where the tokenizer says so).

  Returns:
    int32 arrays of shape `(len(texts), max_length)`: `input_ids`,
    `attention_mask` (1 for tokens, 0 for padding) and `token_type_ids`.

  Example:
    >>> batch = encode_batch(wordpiece, ['To be, or not to be', 'Ay.'], 6)
    >>> batch['input_ids'].shape, batch['attention_mask'].tolist()
    ((2, 6), [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  """
  if pair is not None and len(pair) != len(texts):
    raise ValueError(f'{len(texts)} texts but {len(pair)} pair texts')
  tokenizer = _plain(tokenizer)
  budget = max_length - tokenizer.num_special_tokens_to_add(pair is not None)
  if budget < 1:
    raise ValueError(f'max_length={max_length} leaves no room for text beside the '
                     f'special tokens')
  firsts = tokenizer.encode_batch(list(texts), add_special_tokens=False)
  seconds = (tokenizer.encode_batch(list(pair), add_special_tokens=False) if pair is not None
             else [None] * len(firsts))
  ids = special_ids(tokenizer)
  pad = ids.get('pad', ids.get('eos', 0))
  out = {'input_ids': np.full((len(firsts), max_length), pad, np.int32),
         'attention_mask': np.zeros((len(firsts), max_length), np.int32),
         'token_type_ids': np.zeros((len(firsts), max_length), np.int32)}
  for row, (a, b) in enumerate(zip(firsts, seconds)):
    len_a, len_b = _longest_first(len(a), len(b) if b else 0, budget)
    a.truncate(len_a)
    if b is not None:
      b.truncate(len_b)
    encoding = tokenizer.post_process(a, b, add_special_tokens=True)
    n = len(encoding.ids)
    out['input_ids'][row, :n] = encoding.ids
    out['attention_mask'][row, :n] = 1
    out['token_type_ids'][row, :n] = encoding.type_ids
  return out
