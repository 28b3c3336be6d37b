"""Text datasets of the TFDS catalogue, read from prepared array_record files.

A text run's data section may name `tfds:<name>` (`tfds:imdb_reviews`,
`tfds:tiny_shakespeare`, `tfds:glue/sst2`, ...) instead of a built-in dataset;
`text_runs` turns the records this module reads into model-ready arrays with the
same helpers as the Shakespeare datasets. Records are read by random access
(`as_data_source` on array_record files), without TensorFlow.

A run reads such a dataset only once it is prepared: preparing most TFDS text
datasets needs network access and TensorFlow, so it is done beforehand with
`tfds build <name> --file_format=array_record`. A dataset that is not prepared in
the data directory is a `DatasetNotFoundError` that says how to get it, raised
when a run first reads it, before it trains.
"""

import os

import numpy as np
import tensorflow_datasets as tfds
# `import tensorflow_datasets` imports its collection modules lazily, so the builders
# defined there (`glue`, `super_glue`, ...) are not registered until this import.
import tensorflow_datasets.text  # noqa: F401

from jaxpretrain import paths
from jaxpretrain.data.catalogue import TFDS_PREFIX, resolve_data_dir
from jaxpretrain.data.errors import DatasetNotFoundError, UnknownDatasetError
from jaxpretrain.errors import ConfigError

# Records per batched read: batched reads are fast, and a chunk of long texts stays small.
_READ_CHUNK = 1024


def builder(name: str, *, data_dir: str | os.PathLike | None = None
            ) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name` over array_record files in `data_dir`; nothing is prepared.

  Args:
    name: a TFDS name without the `tfds:` prefix, with its config if any:
      `'imdb_reviews'`, `'glue/sst2'`.
    data_dir: where prepared datasets live; `$TFDS_DATA_DIR` or
      `~/tensorflow_datasets` by default.

  Raises:
    UnknownDatasetError: TFDS knows no such dataset or config.
  """
  try:
    return tfds.builder(name, data_dir=os.fspath(resolve_data_dir(data_dir)),
                        file_format='array_record')
  except ValueError as e:  # TFDS's own DatasetNotFoundError is a ValueError too.
    # TFDS's message goes on to list every dataset it knows; its first line names the problem.
    first = str(e).strip().split('\n', 1)[0]
    raise UnknownDatasetError(
        f"unknown TFDS dataset '{TFDS_PREFIX}{name}': {first} See "
        'https://www.tensorflow.org/datasets/catalog/overview for the names (with the '
        "config after a slash, as in 'tfds:glue/sst2').") from e


def _check_feature(info: tfds.core.DatasetInfo, name: str, key: str, *, kind: str,
                   config_key: str) -> None:
  features = info.features
  if key not in features:
    raise ConfigError(f"data.{config_key}={key!r}, but the records of '{TFDS_PREFIX}{name}' "
                      f'have the features {", ".join(features.keys())}; set data.{config_key} '
                      'to one of them.')
  feature = features[key]
  dtype = np.dtype(feature.np_dtype)
  fits = (dtype.kind in 'OSU') if kind == 'text' else (dtype.kind in 'iu')
  if not fits or feature.shape != ():
    raise ConfigError(f"data.{config_key}={key!r}: that feature of '{TFDS_PREFIX}{name}' is "
                      f'{feature!r}, not one {kind} per record; set data.{config_key} to a '
                      f'{kind} feature.')


def _not_prepared(name: str, split: str, data_dir: paths.PathLike,
                  dataset_dir: paths.PathLike) -> DatasetNotFoundError:
  top = name.split('/', 1)[0]
  return DatasetNotFoundError(
      f"Dataset '{TFDS_PREFIX}{name}' (split {split!r}) is not prepared in {data_dir}: "
      f'{dataset_dir} holds no prepared array_record files, and runs do not download. '
      'To get it, do one of:\n'
      f'  - on a machine with network access (and TensorFlow, which most TFDS builders need '
      f'to prepare), run `tfds build {name} --file_format=array_record --data_dir=DIR`, '
      f'then copy DIR/{top} into {data_dir} (the data directory: data.data_dir, else '
      '$TFDS_DATA_DIR, else ~/tensorflow_datasets);\n'
      '  - point $TFDS_DATA_DIR (or data.data_dir) at a directory where it is prepared '
      'as array_record.')


def _decode(value: bytes | str) -> str:
  # Text features come out of array_record records as UTF-8 bytes.
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_texts(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               text_key: str = 'text', label_key: str | None = None
               ) -> dict[str, np.ndarray]:
  """The texts (and labels) of one split of a prepared TFDS dataset.

  Args:
    name: a TFDS name without the `tfds:` prefix (`'imdb_reviews'`, `'glue/sst2'`).
    split: a split, optionally sliced in TFDS syntax (`'train'`, `'train[:10%]'`).
    data_dir: where prepared datasets live; `$TFDS_DATA_DIR` or
      `~/tensorflow_datasets` by default.
    text_key: the feature holding one text per record.
    label_key: the feature holding one integer label per record, if wanted.

  Returns:
    `text`: an object array of `str` (decoded from UTF-8), one per record in the
    split's order; with `label_key`, `label`: int64 labels.

  Raises:
    UnknownDatasetError: TFDS knows no such dataset.
    ConfigError: a key names no text (or integer) feature, the split does not
      exist, or a label is negative (an unlabelled record, as in GLUE's test splits).
    DatasetNotFoundError: the dataset is not prepared in `data_dir`.

  Example:
    >>> records = read_texts('imdb_reviews', 'test', label_key='label')
    >>> records['text'][0][:30], records['label'][:3]
  """
  dataset = builder(name, data_dir=data_dir)
  _check_feature(dataset.info, name, text_key, kind='text', config_key='text_key')
  if label_key is not None:
    _check_feature(dataset.info, name, label_key, kind='integer', config_key='label_key')
  if not dataset.is_prepared():
    raise _not_prepared(name, split, resolve_data_dir(data_dir), dataset.data_dir)
  try:
    source = dataset.as_data_source(split)
  except ValueError as e:  # An unknown split, or a slice TFDS cannot read.
    raise ConfigError(f"'{TFDS_PREFIX}{name}' cannot give split {split!r}: {e} Set "
                      'data.train_split and data.validation_split to splits it has.') from e
  texts, labels = [], []
  for start in range(0, len(source), _READ_CHUNK):
    for record in source.__getitems__(range(start, min(start + _READ_CHUNK, len(source)))):
      texts.append(_decode(record[text_key]))
      if label_key is not None:
        labels.append(record[label_key])
  out = {'text': np.array(texts, dtype=object)}
  if label_key is not None:
    out['label'] = np.array(labels, np.int64)
    if (out['label'] < 0).any():
      raise ConfigError(f"split {split!r} of '{TFDS_PREFIX}{name}' has unlabelled records "
                        f'({int((out["label"] < 0).sum())} with {label_key} < 0); train and '
                        'validate a classifier on labelled splits.')
  return out
