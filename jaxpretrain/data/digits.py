"""UCI handwritten digits (scikit-learn's `load_digits`) as a TFDS builder.

1,797 8×8 images with 17 grey levels (0-16), 10 classes, shipped inside
scikit-learn. There is no official split, so we fix one: a stratified 80/20
train/test split drawn with seed 0 (`split_indices`), 1,438 train and 359 test
images. Pixels are scaled to bytes by `round(v * 255 / 16)`, so 0 stays 0 and
16 becomes 255.
"""

from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxpretrain.data import image_records

IMAGE_SHAPE = (8, 8, 1)
MAX_VALUE = 16  # load_digits counts set pixels in 4×4 blocks of a 32×32 bitmap.
TEST_FRACTION = 0.2
SEED = 0

_CITATION = """\
@misc{alpaydin1998optical,
  author = {E. Alpaydin and C. Kaynak},
  title  = {Optical Recognition of Handwritten Digits},
  year   = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi    = {10.24432/C50P49},
}
"""


def load_raw() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits: images `(1797, 8, 8, 1)` uint8 in 0-255, labels `(1797,)` int64."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  # slow import, used once
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / MAX_VALUE)).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, *, test_fraction: float = TEST_FRACTION,
                  seed: int = SEED) -> dict[str, np.ndarray]:
  """A stratified split: from each class, `round(test_fraction * n)` random examples test.

  Args:
    labels: `(n,)` integer labels.
    test_fraction: share of each class held out for `test`.
    seed: seed of the draw (numpy's PCG64 via `np.random.default_rng`).

  Returns:
    `{'train': indices, 'test': indices}`, disjoint, covering `range(n)`, each sorted.
  """
  rng = np.random.default_rng(seed)
  test = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    test.append(rng.permutation(members)[:round(test_fraction * len(members))])
  test = np.sort(np.concatenate(test))
  return {'train': np.setdiff1d(np.arange(len(labels)), test), 'test': test}


class JaxpretrainDigits(tfds.core.GeneratorBasedBuilder):
  """UCI digits: 1,438 train and 359 test 8×8 grey digit images (see `split_indices`).

  Registered in TFDS as `jaxpretrain_digits`. Each split keeps the order of
  `load_digits`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 80/20 split of load_digits with seed 0.'}
  code_path = epath.Path(__file__)  # see JaxpretrainFashionMnist

  def __init__(self, *, file_format: str = image_records.FILE_FORMAT, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return image_records.image_info(
        self, shape=IMAGE_SHAPE, classes=10,
        description=('Handwritten digits, 8×8 with 17 grey levels scaled to 0-255; '
                     'stratified 80/20 train/test split with seed 0.'),
        homepage='https://archive.ics.uci.edu/dataset/80', citation=_CITATION,
        license='CC BY 4.0')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data ships with scikit-learn.
    images, labels = load_raw()
    return {split: self._generate_examples(images[indices], labels[indices])
            for split, indices in split_indices(labels).items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    return image_records.image_examples(images, labels)
