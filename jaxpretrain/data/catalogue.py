"""Datasets by name: prepared once into a TFDS data directory, then read by random access.

Names map to local TFDS builders through an explicit dict; the builders prepare
array_record files (readable without TensorFlow) from real copies shipped by
packages, or download them when online. A folder of one's own images, one
sub-folder per class, is `folder:<path>` (see `image_folder`). Any other TFDS
dataset is reachable as `tfds:<name>` (online, and most need TensorFlow to prepare).
"""

from collections.abc import Iterator
import contextlib
import fcntl
import functools
import hashlib
import os
import pathlib
import re
import tempfile

from etils import epath
import tensorflow_datasets as tfds

from jaxpretrain import paths
from jaxpretrain.data import digits, fashion_mnist, image_folder, mnist
from jaxpretrain.data.errors import UnknownDatasetError, UnknownSplitError
from jaxpretrain.data.sources import InMemory, Source, in_memory

TFDS_PREFIX = 'tfds:'
FOLDER_PREFIX = 'folder:'

# Our builders carry their own TFDS names (e.g. `jaxpretrain_fashion_mnist`) so as not
# to clash with TFDS's registry; users know the datasets by the names on the left.
_BUILDERS: dict[str, type[tfds.core.DatasetBuilder]] = {
    'digits': digits.JaxpretrainDigits,
    'fashion_mnist': fashion_mnist.JaxpretrainFashionMnist,
    'mnist': mnist.JaxpretrainMnist,
}


def names() -> tuple[str, ...]:
  """The dataset names the catalogue knows (besides `folder:<path>` and `tfds:<name>`)."""
  return tuple(sorted(_BUILDERS))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> epath.Path:
  """`data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (as TFDS itself).

  A URI (gs://bucket/tfds) is kept as it is and handed to TFDS unresolved.
  """
  if data_dir is None:
    data_dir = os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  return paths.as_path(data_dir)


def _check_known(name: str) -> None:
  if name not in _BUILDERS and not name.startswith((TFDS_PREFIX, FOLDER_PREFIX)):
    raise UnknownDatasetError(
        f'unknown dataset {name!r}; known datasets: {", ".join(names())}. A folder of '
        f"images with one sub-folder per class is '{FOLDER_PREFIX}<path>'. Any dataset of "
        f"the TFDS catalogue can be named '{TFDS_PREFIX}<name>' (it downloads, so it needs "
        'network access, and most need TensorFlow to prepare).')


def _make_builder(name: str, data_dir: str | os.PathLike | None) -> tfds.core.DatasetBuilder:
  _check_known(name)
  data_dir = os.fspath(resolve_data_dir(data_dir))
  if name in _BUILDERS:
    return _BUILDERS[name](data_dir=data_dir)
  if name.startswith(FOLDER_PREFIX):
    root, image_size, channels = image_folder.parse_spec(name[len(FOLDER_PREFIX):])
    return image_folder.JaxpretrainImageFolder(root=root, image_size=image_size,
                                               channels=channels, data_dir=data_dir)
  return tfds.builder(name[len(TFDS_PREFIX):], data_dir=data_dir, file_format='array_record')


def _lock_name(name: str) -> str:
  if name.startswith(FOLDER_PREFIX):
    # A path can be long and is no file name; its hash keeps folders apart, and
    # one lock per folder (whatever the options) keeps its preparations in turn.
    root = image_folder.parse_spec(name[len(FOLDER_PREFIX):])[0]
    path = pathlib.Path(root).expanduser().resolve()
    return f'.folder_{hashlib.sha256(os.fsencode(path)).hexdigest()[:16]}.lock'
  return '.' + re.sub(r'[^A-Za-z0-9_.-]', '_', name) + '.lock'


def _lock_path(data_dir: epath.Path, name: str) -> pathlib.Path:
  """Where the preparation lock of dataset `name` lives: a local file beside the data.

  A lock needs a local file; for a data directory at a URI it goes in the
  temporary folder, keyed by the URI, and serialises the processes of this machine.
  """
  if paths.is_uri(data_dir):
    key = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return pathlib.Path(tempfile.gettempdir()) / 'jaxpretrain_locks' / key / _lock_name(name)
  return pathlib.Path(data_dir) / _lock_name(name)


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive lock on `path`, so concurrent processes prepare a dataset once."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(name: str, *, data_dir: str | os.PathLike | None = None
                     ) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset `name`, its files prepared in `data_dir` (once).

  Raises:
    UnknownDatasetError: the name is not in the catalogue.
    DatasetNotFoundError: the raw data is neither on this machine nor downloadable.
    ImageFolderError: a `folder:` whose layout or images cannot be used.
  """
  _check_known(name)
  with _locked(_lock_path(resolve_data_dir(data_dir), name)):
    # Built under the lock, so a builder made while another process was preparing
    # still reads the finished dataset's split sizes.
    builder = _make_builder(name, data_dir)
    # A no-op once prepared. TFDS's prepared copies on GCS are TFRecord files,
    # unreadable without TensorFlow, hence no GCS lookup.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def data_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> Source:
  """A random-access source of example dicts for one split, prepared on first use.

  Args:
    name: a catalogue name (`'digits'`, `'fashion_mnist'`, `'mnist'`), a folder of
      images `'folder:<path>[?size=<H>[x<W>]&channels=<1|3>]'` (see
      `image_folder`), or `'tfds:<name>'`.
    split: a split, optionally sliced in TFDS syntax: `'train'`, `'train[:600]'`,
      `'train[90%:]'`, `'train+test'`.
    data_dir: where prepared datasets live; `$TFDS_DATA_DIR` or
      `~/tensorflow_datasets` by default.

  Returns:
    A sequence with `len`, `__getitem__` and a batched `__getitems__`; each
    example is a dict of numpy values (Fashion-MNIST: `image` uint8 (28, 28, 1),
    `label` an integer).

  Example:
    >>> train = data_source('fashion_mnist', 'train')
    >>> len(train), train[0]['image'].shape
    (60000, (28, 28, 1))
    >>> pets = data_source('folder:~/pets?size=64&channels=3', 'train')
  """
  return _split(prepared_builder(name, data_dir=data_dir), name, split)


def _split(builder: tfds.core.DatasetBuilder, name: str, split: str) -> Source:
  """`builder.as_data_source(split)`, with an unknown split or bad slice named as such."""
  try:
    return builder.as_data_source(split)
  except ValueError as e:
    splits = ', '.join(repr(s) for s in builder.info.splits)
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UnknownSplitError(
        f'{name!r} cannot read split {split!r} ({reason}); its splits are {splits}, sliced in '
        "TFDS syntax if need be: 'train[:600]', 'train[90%:]', 'train+test'") from e


def in_memory_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None
                     ) -> InMemory:
  """`data_source(name, split)` read whole into memory, once per process.

  Decoding a split takes far longer than training on it for small datasets
  (Fashion-MNIST's 60,000 images: about ten seconds), and a recipe, a sweep or a
  transfer table reads the same split in every run. Later calls for the same
  prepared files return the same arrays, which are read-only for that reason.
  """
  builder = prepared_builder(name, data_dir=data_dir)
  info = paths.as_path(builder.data_dir) / 'dataset_info.json'
  # The file's modification time tells a re-prepared dataset from the one cached (object
  # stores give it in seconds).
  prepared = info.stat().mtime if paths.is_uri(info) else os.stat(info).st_mtime_ns
  return _read_prepared(name, split, os.fspath(resolve_data_dir(data_dir)), prepared)


@functools.lru_cache(maxsize=8)
def _read_prepared(name: str, split: str, data_dir: str, prepared_ns: int) -> InMemory:
  del prepared_ns  # Part of the cache key only.
  memory = in_memory(_split(_make_builder(name, data_dir), name, split))
  for array in memory.arrays.values():
    array.flags.writeable = False
  return memory


def dataset_info(name: str, *, data_dir: str | os.PathLike | None = None
                 ) -> tfds.core.DatasetInfo:
  """The TFDS `DatasetInfo` of `name`, without preparing it.

  Features are always known (e.g. `info.features['label'].num_classes`,
  `info.features['image'].shape`); split sizes only once the dataset is prepared.
  """
  return _make_builder(name, data_dir).info
