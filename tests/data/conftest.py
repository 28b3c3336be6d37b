"""Fashion-MNIST fixtures: a tiny real slice (most tests) and the full dataset (a few)."""

import gzip
import pathlib

from matplotlib import cbook
import numpy as np
from PIL import Image
import pytest

from jaxpretrain.data import catalogue, data_source, fashion_mnist, read_all


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


# Real images: Fashion-MNIST (gray) and matplotlib's sample photograph of Grace Hopper
# in front of a flag (RGB: skin, navy, red, white and blue).

@pytest.fixture(scope='session')
def gray():
  """The first 8 Fashion-MNIST test images, 28x28x1 in [0, 1]."""
  batch = read_all(data_source('fashion_mnist', 'test[:8]'))
  return (batch['image'] / 255.0).astype(np.float32)


@pytest.fixture(scope='session')
def rgb():
  """Eight 32x32 RGB views of a real photograph (the whole of it and seven crops), in [0, 1]."""
  photo = Image.open(cbook.get_sample_data('grace_hopper.jpg')).convert('RGB')
  boxes = [(0, 0, 512, 600), (128, 172, 384, 428)] + [
      (left, top, left + 256, top + 256) for top in (0, 172, 344) for left in (0, 256)]
  views = [np.asarray(photo.resize((32, 32), Image.BILINEAR, box=b)) for b in boxes]
  return (np.stack(views) / 255.0).astype(np.float32)
