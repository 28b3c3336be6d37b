"""TFDS text datasets through the text configs: the offline error, and a prepared one read."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxpretrain import cli, config as config_lib, loop
from jaxpretrain import data as data_lib
from jaxpretrain.data import text, text_runs, text_tfds, tokenizers
from jaxpretrain.data.errors import DatasetNotFoundError, UnknownDatasetError
from jaxpretrain.errors import ConfigError, JaxpretrainError

_WORDS = 64  # Passage length of the genre configs.
_UNLABELLED = 20  # Passages in the unlabelled split of the genre dataset.


class JaxpretrainTestPlayGenres(tfds.core.GeneratorBasedBuilder):
  """Shakespeare passages → genre, laid out as `imdb_reviews` is (train, test, unsupervised).

  `train` holds the passages of the validation split of `text.split_documents`,
  `test` those of the test split, so the records differ from the training text that
  the built-in datasets train their tokenizer on; `unsupervised` holds the first test
  passages with the label -1, as TFDS marks unlabelled records.
  """

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=list(text.GENRES)),
            'play': tfds.features.Text(),
        }),
        disable_shuffling=True)  # Records keep the order of `genre_passages`.

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples('validation'),
            'test': self._generate_examples('test'),
            'unsupervised': self._generate_examples('test', unlabelled=True)}

  def _generate_examples(self, plays, unlabelled=False):
    passages = text.genre_passages(plays, words=_WORDS)
    for i in range(_UNLABELLED if unlabelled else len(passages)):
      example = passages[i]
      yield i, {'text': str(example['text']), 'play': str(example['play']),
                'label': -1 if unlabelled else int(example['label'])}


class JaxpretrainTestPlaysText(tfds.core.GeneratorBasedBuilder):
  """One long text per split, as `tiny_shakespeare`: the validation text, then the test text."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples('validation'),
            'validation': self._generate_examples('test')}

  def _generate_examples(self, plays):
    yield 0, {'text': '\n'.join(text.pretraining_texts(plays))}


@pytest.fixture(scope='module')
def prepared_dir(tmp_path_factory):
  """A TFDS data directory with both builders prepared as array_record."""
  data_dir = tmp_path_factory.mktemp('text_tfds')
  for builder in (JaxpretrainTestPlayGenres, JaxpretrainTestPlaysText):
    builder(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir


def _config(spec, *overrides):
  return config_lib.override(config_lib.load(spec), list(overrides))


def _files(workdir):
  return {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob('*') if p.is_file()}


# Offline: a TFDS text dataset that is not prepared here.


@pytest.mark.parametrize('spec, name, overrides', [
    ('configs/shakespeare_genre.py:tiny', 'imdb_reviews',
     ['data.validation_split=test', 'model.num_classes=2']),
    ('configs/shakespeare_bert_mlm.py:tiny', 'tiny_shakespeare', []),
    ('configs/shakespeare_genre.py:tiny', 'glue/sst2', ['data.text_key=sentence']),
])
def test_unprepared_dataset_fails_before_training_and_keeps_the_workdir(
    tmp_path, monkeypatch, spec, name, overrides):
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text('{"step": 100, "split": "train", "loss": 2.5}\n')
  before = _files(workdir)
  config = _config(spec, f'data.name=tfds:{name}', *overrides)
  with pytest.raises(DatasetNotFoundError) as info:
    loop.train(config, workdir, progress=False)
  message = str(info.value)
  assert f"Dataset 'tfds:{name}' (split 'train') is not prepared in {data_dir}" in message
  assert f'tfds build {name} --file_format=array_record' in message
  assert f"copy DIR/{name.split('/')[0]} into {data_dir}" in message
  assert '$TFDS_DATA_DIR' in message
  assert isinstance(info.value, JaxpretrainError)
  assert _files(workdir) == before  # No tokenizer, no checkpoint, nothing lost.
  assert not list(data_dir.iterdir())  # Nothing half-prepared either.


def test_cli_names_the_data_dir_it_looked_in(tmp_path, monkeypatch, capsys):
  # $TFDS_DATA_DIR, as a user sets it, at an empty directory: the data dir the CLI resolves
  # without a data.data_dir key, and one where the dataset is surely not prepared.
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'run'
  data_dir.mkdir()
  monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
  code = cli.main(['pretrain', '--config', 'configs/shakespeare_gpt_clm.py:tiny',
                   '--config.data.name=tfds:tiny_shakespeare', '--workdir', str(workdir),
                   '--no-progress'])
  assert code != 0
  err = capsys.readouterr().err
  assert f'is not prepared in {data_dir}' in err
  assert 'tfds build tiny_shakespeare --file_format=array_record' in err
  assert not workdir.exists() or not list(workdir.iterdir())


def test_names_and_features_are_checked_without_the_data(tmp_path):
  genre = _config('configs/shakespeare_genre.py:tiny', f'data.data_dir={tmp_path}')
  with pytest.raises(UnknownDatasetError, match="'tfds:imbd_reviews'"):
    text_runs.text_source(_config_with(genre, name='tfds:imbd_reviews'), 'train', None)
  with pytest.raises(ConfigError, match='features text, label; set data.text_key'):
    text_runs.text_source(_config_with(genre, name='tfds:imdb_reviews', text_key='review'),
                          'train', None)
  with pytest.raises(ConfigError, match="'shakespeare_genre' feeds 'classification'"):
    text_runs.task(_config_with(genre, task='mlm'))
  with pytest.raises(ConfigError, match="data.task='seq2seq'"):
    text_runs.task(_config_with(genre, name='tfds:imdb_reviews', task='seq2seq'))
  assert not list(tmp_path.iterdir())


def _config_with(config, **data):
  config = config.copy_and_resolve_references()
  config.data.update(data)
  return config.data


# A dataset prepared locally from real text.


def test_genre_classification_reads_the_prepared_records(prepared_dir, tmp_path):
  name = JaxpretrainTestPlayGenres.name
  config = _config('configs/shakespeare_genre.py:tiny', f'data.name=tfds:{name}',
                   f'data.data_dir={prepared_dir}', 'data.validation_split=test')
  assert text_runs.is_text(config.data) and text_runs.task(config.data) == 'classification'
  summary = loop.train(config, tmp_path, kind='finetune', progress=False)

  passages = text.genre_passages('validation', words=_WORDS)
  records = tfds.data_source(name, split='train', data_dir=str(prepared_dir))
  assert [r['label'] for r in records] == passages.arrays['label'].tolist()
  texts = [str(t) for t in passages.arrays['text']]
  # The run's tokenizer was trained on the dataset's training texts, not on the plays.
  # (Token sets: WordPiece training numbers the alphabet in no fixed order.)
  tokenizer = tokenizers.load(tmp_path)
  vocab_size = config.data.tokenizer.vocab_size
  tokens = set(tokenizer.get_vocab())
  assert tokens == set(tokenizers.train_wordpiece(texts, vocab_size).get_vocab())
  assert tokens != set(tokenizers.train_wordpiece(text.pretraining_texts('train'),
                                                  vocab_size).get_vocab())

  train = text_runs.text_source(config.data, 'train', tokenizer)
  seq_len, batch_size = config.data.seq_len, config.data.batch_size
  assert len(train) == len(passages)
  batch = next(iter(data_lib.eval_batches(train, batch_size=batch_size)))
  assert batch['input_ids'].shape == (batch_size, seq_len)
  assert batch['input_ids'].dtype == np.int32
  np.testing.assert_array_equal(batch['label'], passages.arrays['label'][:batch_size])
  np.testing.assert_array_equal(
      batch['input_ids'], tokenizers.encode_batch(tokenizer, texts[:batch_size],
                                                  seq_len)['input_ids'])
  shuffled = next(data_lib.train_loader(train, batch_size=batch_size, seed=0))
  assert shuffled['input_ids'].shape == (batch_size, seq_len)
  assert shuffled['label'].shape == (batch_size,)

  assert summary['steps'] == config.train.steps
  log = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in log if r['split'] == 'train'] == [2, 4]
  assert all(np.isfinite(r['loss']) for r in log)
  validation = [r for r in log if r['split'] == 'validation']
  assert validation and 0.0 <= validation[-1]['accuracy'] <= 1.0


def test_mlm_pretraining_on_one_long_text_per_split(prepared_dir, tmp_path):
  name = JaxpretrainTestPlaysText.name
  config = _config('configs/shakespeare_bert_mlm.py:tiny', f'data.name=tfds:{name}',
                   f'data.data_dir={prepared_dir}')
  summary = loop.train(config, tmp_path, progress=False)
  tokenizer = tokenizers.load(tmp_path)
  source = text_runs.text_source(config.data, 'validation', tokenizer)
  # The same rows as the helper makes of the same text.
  expected = text.mlm_sequences(tokenizer, ['\n'.join(text.pretraining_texts('test'))],
                                config.data.seq_len)
  for key, array in expected.items():
    np.testing.assert_array_equal(source.arrays[key], array)
  assert source.arrays['input_ids'].shape[1] == config.data.seq_len
  assert np.isfinite(summary['best_validation']['loss'])


def test_unknown_and_unlabelled_splits_are_config_errors(prepared_dir):
  name = JaxpretrainTestPlayGenres.name
  with pytest.raises(ConfigError, match=r"split 'validation'.*\['train', 'test', 'unsupervised'\]"):
    text_tfds.read_texts(name, 'validation', data_dir=prepared_dir, label_key='label')
  with pytest.raises(ConfigError, match=f'{_UNLABELLED} with label < 0'):
    text_tfds.read_texts(name, 'unsupervised', data_dir=prepared_dir, label_key='label')
  unlabelled = text_tfds.read_texts(name, 'unsupervised[:5]', data_dir=prepared_dir)
  assert list(unlabelled) == ['text'] and len(unlabelled['text']) == 5
  assert unlabelled['text'][0] == text.genre_passages('test', words=_WORDS)[0]['text']
