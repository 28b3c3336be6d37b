"""What every local image-classification builder shares: its features and its records.

Images are stored as uint8 `Tensor` features rather than TFDS `Image` features,
whose PNG encoding needs TensorFlow; the files are array_record, the format
`as_data_source` reads without TensorFlow.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

FILE_FORMAT = 'array_record'


def image_info(builder: tfds.core.DatasetBuilder, *, shape: Sequence[int],
               classes: int | Sequence[str], description: str, **metadata: Any
               ) -> tfds.core.DatasetInfo:
  """The `DatasetInfo` of `image` (uint8, `shape`) and `label` (a number of classes, or names).

  `metadata` (homepage, citation, license) goes to `DatasetInfo` as is.
  """
  label = (tfds.features.ClassLabel(num_classes=classes) if isinstance(classes, int)
           else tfds.features.ClassLabel(names=list(classes)))
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=tuple(shape), dtype=np.uint8),
          'label': label,
      }),
      supervised_keys=('image', 'label'),
      # Records keep the source's order, so `train[:600]` means the same images everywhere.
      disable_shuffling=True,
      **metadata,
  )


def image_examples(images: Iterable[np.ndarray], labels: Iterable[int]
                   ) -> Iterator[tuple[int, dict[str, Any]]]:
  """`(key, {'image', 'label'})` records in order, as `_generate_examples` yields them."""
  for i, (image, label) in enumerate(zip(images, labels, strict=True)):
    yield i, {'image': image, 'label': int(label)}
