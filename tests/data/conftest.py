"""Fashion-MNIST fixtures: a tiny real slice (most tests) and the full dataset (a few)."""

import gzip
import pathlib

import numpy as np
import pytest

from jaxpretrain.data import catalogue, fashion_mnist


def _raw_files() -> pathlib.Path:
  raw = pathlib.Path(fashion_mnist.DEBIAN_DIR)
  if not all((raw / name).is_file() for name in fashion_mnist.FILES.values()):
    pytest.fail(f'needs the real Fashion-MNIST files in {raw}: '
                'sudo apt-get install dataset-fashion-mnist (make test installs it)')
  return raw


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes an IDX file: magic (0, 0, uint8 type 0x08, ndim), big-endian dims, data."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, '>i4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


@pytest.fixture(scope='session')
def tiny_raw_dir(tmp_path_factory) -> pathlib.Path:
  """The first 200 train and 100 test images and labels of the real files, as IDX."""
  raw = _raw_files()
  out = tmp_path_factory.mktemp('tiny_fashion_mnist_raw')
  sizes = {'train': 200, 'test': 100}
  for key, name in fashion_mnist.FILES.items():
    split, kind = key.split('_')
    array = fashion_mnist.read_idx(raw / name, images=kind == 'images')[:sizes[split]]
    _write_idx(out / name, array.reshape(-1, 28, 28) if kind == 'images' else array)
  return out


@pytest.fixture(scope='session')
def tiny_data_dir(tiny_raw_dir, tmp_path_factory) -> pathlib.Path:
  """A TFDS data directory with the tiny slice prepared as `fashion_mnist`."""
  data_dir = tmp_path_factory.mktemp('tiny_tfds')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(fashion_mnist.ENV_VAR, str(tiny_raw_dir))
    catalogue.prepared_builder('fashion_mnist', data_dir=data_dir)
  return data_dir


@pytest.fixture(scope='session')
def full_data_dir(tmp_path_factory) -> pathlib.Path:
  """A TFDS data directory with all of Fashion-MNIST prepared (about ten seconds)."""
  _raw_files()
  data_dir = tmp_path_factory.mktemp('full_tfds')
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv(fashion_mnist.ENV_VAR, raising=False)
    catalogue.prepared_builder('fashion_mnist', data_dir=data_dir)
  return data_dir


@pytest.fixture
def tiny_train(tiny_data_dir):
  return catalogue.data_source('fashion_mnist', 'train', data_dir=tiny_data_dir)


@pytest.fixture
def tiny_test(tiny_data_dir):
  return catalogue.data_source('fashion_mnist', 'test', data_dir=tiny_data_dir)
