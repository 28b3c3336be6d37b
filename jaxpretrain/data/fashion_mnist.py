"""Fashion-MNIST as a TFDS builder that prepares array_record files without TensorFlow.

The raw IDX files come from a local folder: `$JAXPRETRAIN_FASHION_MNIST_DIR` if set,
else where the Debian package `dataset-fashion-mnist` puts them. When the files are
not there, the TFDS download manager fetches them from the Fashion-MNIST site.
"""

from collections.abc import Iterator, Mapping
import gzip
import os
import pathlib
import socket
import threading
from typing import Any
import urllib.parse
import urllib.request

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxpretrain.data import image_records
from jaxpretrain.data.errors import DatasetNotFoundError

ENV_VAR = 'JAXPRETRAIN_FASHION_MNIST_DIR'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
IMAGE_SHAPE = (28, 28, 1)
_IMAGES_OFFSET, _LABELS_OFFSET = 16, 8  # IDX header bytes: magic, then one int32 per dim.
# TFDS retries a failed download ten times with growing back-off, several minutes
# offline; a connection probe with this bound lets the offline case fail at once.
_PROBE_TIMEOUT_S = 10.0

_CITATION = """\
@article{xiao2017fashion,
  author  = {Han Xiao and Kashif Rasul and Roland Vollgraf},
  title   = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  journal = {CoRR},
  volume  = {abs/1708.07747},
  year    = {2017},
}
"""


def raw_dir() -> pathlib.Path:
  """The folder searched for the four raw IDX files."""
  return pathlib.Path(os.environ.get(ENV_VAR) or DEBIAN_DIR).expanduser()


def read_idx(path: str | os.PathLike, *, images: bool) -> np.ndarray:
  """Reads a gzipped IDX file: images as `(n, 28, 28, 1)` uint8, labels as `(n,)` uint8."""
  with gzip.open(path) as f:
    data = np.frombuffer(f.read(), np.uint8, offset=_IMAGES_OFFSET if images else _LABELS_OFFSET)
  return data.reshape(-1, *IMAGE_SHAPE) if images else data


def _not_found_message(reason: str) -> str:
  files = ', '.join(FILES.values())
  return (
      f"Dataset 'fashion_mnist' (Fashion-MNIST) is not available: its raw files ({files}) "
      f'are not all in {raw_dir()}, and {reason}. To get it, do one of:\n'
      f'  - sudo apt-get install dataset-fashion-mnist   (installs them in {DEBIAN_DIR});\n'
      f'  - set {ENV_VAR} to a folder that holds the four files;\n'
      f'  - run with network access, so that TFDS downloads them from {URL}.')


def _reachable(url: str, timeout: float) -> bool:
  """Whether a TCP connection to the URL's host opens within `timeout` seconds."""
  if urllib.request.getproxies():
    return True  # Behind a proxy only a real request can tell; let TFDS try it.
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  opened = []

  def connect() -> None:
    try:
      socket.create_connection((parts.hostname, port), timeout=timeout).close()
      opened.append(True)
    except OSError:
      pass

  # Name resolution has no timeout of its own, hence the daemon thread.
  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(opened)


def _download(dl_manager: tfds.download.DownloadManager) -> Mapping[str, Any]:
  if not _reachable(URL, _PROBE_TIMEOUT_S):
    raise DatasetNotFoundError(_not_found_message(f'{URL} cannot be reached (offline?)'))
  try:
    return dl_manager.download({key: URL + name for key, name in FILES.items()})
  except Exception as e:  # Any failure here means the same thing to the user.
    raise DatasetNotFoundError(_not_found_message(f'downloading them failed: {e}')) from e


def _raw_files(dl_manager: tfds.download.DownloadManager) -> Mapping[str, Any]:
  local = {key: raw_dir() / name for key, name in FILES.items()}
  if all(path.is_file() for path in local.values()):
    return local
  return _download(dl_manager)


class JaxpretrainFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST: 60,000 train and 10,000 test 28×28 grey images of 10 clothing classes.

  Registered in TFDS as `jaxpretrain_fashion_mnist` so as not to clash with TFDS's own
  `fashion_mnist` (which stores PNGs, needing TensorFlow to encode). Records keep the
  order of the raw files, so `train[:600]` is the first 600 official training images.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Prepared from the raw IDX files; images as uint8 tensors.'}
  # TFDS's own lookup of a builder's file (beside which it looks for `checksums.tsv`)
  # needs the `importlib_resources` backport, installed only on Python < 3.9.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format: str = image_records.FILE_FORMAT, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return image_records.image_info(
        self, shape=IMAGE_SHAPE, classes=CLASS_NAMES,
        description='Zalando article images: 28×28 greyscale, 10 classes.',
        homepage='https://github.com/zalandoresearch/fashion-mnist', citation=_CITATION,
        license='MIT')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = _raw_files(dl_manager)
    return {split: self._generate_examples(files[f'{split}_images'], files[f'{split}_labels'])
            for split in ('train', 'test')}

  def _generate_examples(self, images_path, labels_path) -> Iterator[tuple[int, dict]]:
    images, labels = read_idx(images_path, images=True), read_idx(labels_path, images=False)
    if len(images) != len(labels):
      raise ValueError(f'{images_path} has {len(images)} images but {labels_path} has '
                       f'{len(labels)} labels; the IDX files do not belong together.')
    yield from image_records.image_examples(images, labels)
