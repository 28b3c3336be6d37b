"""grain input pipelines: shuffled, per-process sharded training batches and padded eval batches.

Batches are dicts of numpy arrays with this process's part of the global batch
first: `image` float32 NHWC in [0, 1], `label` int32, and in eval batches `mask`
float32 (1 for real examples, 0 for padding). Both pipelines first form batches
of indices and then read each batch's records with one batched read.
"""

from collections.abc import Callable, Mapping

import grain
import jax
import numpy as np

from jaxpretrain.data.sources import Source, read_batch
from jaxpretrain.errors import BatchError

Batch = dict[str, np.ndarray]
Transform = Callable[[Batch], Batch]

# Batches, not records, flow through the prefetch buffer, so a few suffice; grain's
# default of 500 would hold hundreds of megabytes of images.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def preprocess(batch: Mapping[str, np.ndarray]) -> Batch:
  """Converts a stacked batch of records into model inputs.

  `image` uint8 becomes float32 in [0, 1] and an integer `label` becomes int32;
  other features pass through unchanged.
  """
  out = dict(batch)
  if 'image' in out and out['image'].dtype == np.uint8:
    # Multiplying by a float32 constant keeps the result float32 (no float64 detour).
    out['image'] = out['image'].astype(np.float32) * np.float32(1 / 255)
  if 'label' in out and np.issubdtype(out['label'].dtype, np.integer):
    out['label'] = out['label'].astype(np.int32)
  return out


def _reader(source: Source, transform: Transform | None) -> Callable[[np.ndarray], Batch]:
  def read(indices: np.ndarray) -> Batch:
    batch = preprocess(read_batch(source, indices))
    return transform(batch) if transform else batch
  return read


def _local_rows(batch_size: int, shard_index: int | None, shard_count: int | None) -> slice:
  """This process's rows of a global batch of `batch_size` rows."""
  if shard_index is None:
    shard_index = jax.process_index()
  if shard_count is None:
    shard_count = jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index must be in [0, {shard_count}), got {shard_index}')
  if batch_size <= 0 or batch_size % shard_count:
    raise BatchError(f'batch_size={batch_size} is the global batch and must be a positive '
                     f'multiple of the {shard_count} shards (processes); use e.g. '
                     f'{max(batch_size // shard_count, 1) * shard_count}.')
  local = batch_size // shard_count
  return slice(shard_index * local, (shard_index + 1) * local)


def train_loader(source: Source, *, batch_size: int, seed: int,
                 transform: Transform | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, num_epochs: int | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
  """An endless (or `num_epochs`-long) iterator of shuffled training batches.

  All processes shuffle the whole source with the same seed (reshuffled every
  epoch), form the same global batches of `batch_size` examples (the last
  incomplete one is dropped) and each reads only its own `batch_size /
  shard_count` rows. The global batch of a step is therefore the same whatever
  the number of processes, and every process sits at the same position.

  The iterator's position is a small JSON-able dict: save `it.get_state()` (e.g.
  with `ocp.args.JsonSave`, or pass the iterator itself to
  `grain.checkpoint.CheckpointSave` in an Orbax checkpoint) and resume with
  `it.set_state(state)` on a freshly built loader with the same arguments.

  Args:
    source: random-access examples, e.g. `data_source('fashion_mnist', 'train')`.
    batch_size: the global batch size, a multiple of `shard_count`.
    seed: seed of the shuffle.
    transform: applied to each preprocessed batch (after `preprocess`).
    shard_index: this process's shard; `jax.process_index()` by default.
    shard_count: number of shards; `jax.process_count()` by default.
    num_epochs: passes over the data; `None` repeats forever.
    read_options: grain threading and prefetch; `DEFAULT_READ_OPTIONS` by default.

  Returns:
    A `grain.DatasetIterator` of batches with `get_state` / `set_state`.
  """
  rows = _local_rows(batch_size, shard_index, shard_count)
  indices = (grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(num_epochs)
             .batch(batch_size, drop_remainder=True))
  batches = indices.map(lambda batch_indices: batch_indices[rows]).map(_reader(source, transform))
  return iter(batches.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS))


def eval_batches(source: Source, *, batch_size: int, transform: Transform | None = None,
                 shard_index: int | None = None, shard_count: int | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """One ordered pass over `source` in batches of equal shape, padded at the end.

  The last global batch is filled up with copies of the first example whose
  `mask` is 0, so a step compiled once serves every batch and padded rows count
  for nothing. Every process gets the same number of batches.

  Args:
    source: random-access examples.
    batch_size: the global batch size, a multiple of `shard_count`.
    transform: applied to each preprocessed batch (before `mask` is added).
    shard_index: this process's shard; `jax.process_index()` by default.
    shard_count: number of shards; `jax.process_count()` by default.
    read_options: grain threading and prefetch; `DEFAULT_READ_OPTIONS` by default.

  Returns:
    A re-iterable `grain.IterDataset` of `ceil(len(source) / batch_size)` batches,
    each with a float32 `mask`.
  """
  rows = _local_rows(batch_size, shard_index, shard_count)
  read = _reader(source, transform)

  def padded_batch(step: int) -> Batch:
    positions = np.arange(step * batch_size, (step + 1) * batch_size)[rows]
    real = positions < len(source)
    batch = read(np.where(real, positions, 0))
    batch['mask'] = real.astype(np.float32)
    return batch

  num_batches = -(-len(source) // batch_size)
  return (grain.MapDataset.range(num_batches).map(padded_batch)
          .to_iter_dataset(read_options or DEFAULT_READ_OPTIONS))


def load_split(source: Source, *, transform: Transform | None = None) -> Batch:
  """A whole (small) source as one preprocessed batch, e.g. for a quick evaluation."""
  return _reader(source, transform)(np.arange(len(source)))
