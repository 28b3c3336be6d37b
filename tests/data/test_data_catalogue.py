"""The catalogue: preparing Fashion-MNIST without TensorFlow, and its errors."""

import time
import urllib.request

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxpretrain.data import catalogue, fashion_mnist
from jaxpretrain.data.errors import DatasetNotFoundError, UnknownDatasetError, UnknownSplitError
from jaxpretrain.errors import JaxpretrainError


def test_in_memory_source_reads_a_split_once_into_read_only_arrays(full_data_dir):
  split = 'test[:500]'
  memory = catalogue.in_memory_source('fashion_mnist', split, data_dir=full_data_dir)
  assert catalogue.in_memory_source('fashion_mnist', split, data_dir=full_data_dir) is memory
  records = catalogue.data_source('fashion_mnist', split, data_dir=full_data_dir)
  assert len(memory) == len(records) == 500
  for i in (0, 123, 499):
    np.testing.assert_array_equal(memory[i]['image'], records[i]['image'])
    assert memory[i]['label'] == records[i]['label']
  with pytest.raises(ValueError, match='read-only'):
    memory.arrays['image'][0] = 0


def test_full_dataset_matches_the_raw_files(full_data_dir):
  train = catalogue.data_source('fashion_mnist', 'train', data_dir=full_data_dir)
  test = catalogue.data_source('fashion_mnist', 'test', data_dir=full_data_dir)
  assert (len(train), len(test)) == (60000, 10000)
  raw = fashion_mnist.raw_dir()
  images = fashion_mnist.read_idx(raw / fashion_mnist.FILES['test_images'], images=True)
  labels = fashion_mnist.read_idx(raw / fashion_mnist.FILES['test_labels'], images=False)
  # Records keep the order of the raw files.
  for i in (0, 4321, 9999):
    assert test[i]['image'].dtype == np.uint8
    np.testing.assert_array_equal(test[i]['image'], images[i])
    assert test[i]['label'] == labels[i]


def test_split_slicing(tiny_data_dir, tiny_train):
  head = catalogue.data_source('fashion_mnist', 'train[:60]', data_dir=tiny_data_dir)
  tail = catalogue.data_source('fashion_mnist', 'train[50%:]', data_dir=tiny_data_dir)
  half = len(tiny_train) // 2
  assert (len(head), len(tail)) == (60, half)
  np.testing.assert_array_equal(head[59]['image'], tiny_train[59]['image'])
  np.testing.assert_array_equal(tail[0]['image'], tiny_train[half]['image'])


@pytest.mark.parametrize('split', ['tset', 'train[:abc]'])
def test_an_unknown_split_or_bad_slice_names_the_splits(tiny_data_dir, split):
  for read in (catalogue.data_source, catalogue.in_memory_source):
    with pytest.raises(UnknownSplitError, match=rf"cannot read split .*its splits are 'train', "
                                                rf"'test', sliced in TFDS syntax"):
      read('fashion_mnist', split, data_dir=tiny_data_dir)


def test_second_call_reuses_the_prepared_files(tiny_data_dir, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('prepared again')

  monkeypatch.setattr(fashion_mnist.JaxpretrainFashionMnist, '_split_generators', fail)
  test = catalogue.data_source('fashion_mnist', 'test', data_dir=tiny_data_dir)
  assert len(test) == 100


def test_dataset_info_without_preparing(tmp_path):
  info = catalogue.dataset_info('fashion_mnist', data_dir=tmp_path)
  assert info.features['label'].num_classes == 10
  assert info.features['label'].names[0] == 'T-shirt/top'
  assert info.features['image'].shape == (28, 28, 1)
  assert not list(tmp_path.glob('**/*.array_record*'))


def test_any_tfds_dataset_by_prefix(tmp_path):
  info = catalogue.dataset_info('tfds:mnist', data_dir=tmp_path)
  assert info.features['label'].num_classes == 10
  assert info.file_format.value == 'array_record'


def test_builder_name_does_not_clash_with_tfds():
  assert fashion_mnist.JaxpretrainFashionMnist.name != 'fashion_mnist'
  assert 'fashion_mnist' in catalogue.names()


def _prepare_offline(tmp_path, monkeypatch):
  empty = tmp_path / 'no_raw_files'
  empty.mkdir()
  monkeypatch.setenv(fashion_mnist.ENV_VAR, str(empty))
  return catalogue.data_source('fashion_mnist', 'train', data_dir=tmp_path / 'tfds')


def _assert_helpful(message: str) -> None:
  assert "'fashion_mnist'" in message
  assert 'sudo apt-get install dataset-fashion-mnist' in message
  assert fashion_mnist.ENV_VAR in message
  assert 'network' in message


def test_absent_dataset_offline_fails_fast_with_a_fix(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, '_reachable', lambda url, timeout: False)
  start = time.monotonic()
  with pytest.raises(DatasetNotFoundError) as info:
    _prepare_offline(tmp_path, monkeypatch)
  assert time.monotonic() - start < 30
  assert isinstance(info.value, JaxpretrainError)
  _assert_helpful(str(info.value))


def test_failed_download_gives_the_same_error(tmp_path, monkeypatch):
  def download(self, urls):
    raise ConnectionError('Name or service not known')

  monkeypatch.setattr(fashion_mnist, '_reachable', lambda url, timeout: True)
  monkeypatch.setattr(tfds.download.DownloadManager, 'download', download)
  with pytest.raises(DatasetNotFoundError, match='Name or service not known') as info:
    _prepare_offline(tmp_path, monkeypatch)
  _assert_helpful(str(info.value))
  assert isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.skipif(bool(urllib.request.getproxies()), reason='behind a proxy, not probed')
def test_unreachable_host_is_detected():
  assert not fashion_mnist._reachable('http://unreachable.invalid/', timeout=5.0)


def test_unknown_name_lists_the_known_ones(tmp_path):
  with pytest.raises(UnknownDatasetError, match='fashion_mnist') as info:
    catalogue.data_source('fashoin_mnist', 'train', data_dir=tmp_path)
  assert isinstance(info.value, JaxpretrainError)
  assert not list(tmp_path.iterdir())
