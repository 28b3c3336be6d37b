"""grain pipelines: batch format, shuffling, sharding, resumption and eval padding."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxpretrain.data import pipeline
from jaxpretrain.errors import BatchError

# Index-level properties (partitions, order) are checked on a source whose
# examples carry their own position.
IDS = [{'id': np.int64(i)} for i in range(100)]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _ids(batches):
  return np.concatenate([b['id'] for b in batches])


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_are_model_ready(tiny_train):
  batch = next(pipeline.train_loader(tiny_train, batch_size=32, seed=0))
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (32, 28, 28, 1) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['image'].max() > 0.5  # Scaled once, not twice.
  assert set(batch['label']) <= set(range(10))


def test_shuffle_is_determined_by_the_seed(tiny_train):
  first = _take(pipeline.train_loader(tiny_train, batch_size=16, seed=3), 3)
  again = _take(pipeline.train_loader(tiny_train, batch_size=16, seed=3), 3)
  other = _take(pipeline.train_loader(tiny_train, batch_size=16, seed=4), 3)
  _assert_same_batches(first, again)
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_epochs_cover_the_data_once_each_reshuffled():
  epochs = _ids(pipeline.train_loader(IDS, batch_size=10, seed=0, num_epochs=2))
  assert len(epochs) == 200
  np.testing.assert_array_equal(np.sort(epochs[:100]), np.arange(100))
  np.testing.assert_array_equal(np.sort(epochs[100:]), np.arange(100))
  assert not np.array_equal(epochs[:100], epochs[100:])
  assert not np.array_equal(epochs[:100], np.arange(100))


def test_last_incomplete_batch_is_dropped():
  batches = list(pipeline.train_loader(IDS, batch_size=30, seed=0, num_epochs=1))
  assert [len(b['id']) for b in batches] == [30, 30, 30]


def test_two_shards_split_each_global_batch():
  whole = list(pipeline.train_loader(IDS, batch_size=20, seed=1, num_epochs=1,
                                     shard_index=0, shard_count=1))
  shards = [list(pipeline.train_loader(IDS, batch_size=20, seed=1, num_epochs=1,
                                       shard_index=i, shard_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(whole) == 5
  for batch, part0, part1 in zip(whole, *shards):
    assert len(part0['id']) == len(part1['id']) == 10
    np.testing.assert_array_equal(batch['id'], np.concatenate([part0['id'], part1['id']]))
  ids0, ids1 = _ids(shards[0]), _ids(shards[1])
  assert not set(ids0) & set(ids1)
  np.testing.assert_array_equal(np.sort(np.concatenate([ids0, ids1])), np.arange(100))


def test_default_shard_is_this_process():
  default = _take(pipeline.train_loader(IDS, batch_size=8, seed=0), 2)
  explicit = _take(pipeline.train_loader(IDS, batch_size=8, seed=0, shard_index=0,
                                         shard_count=1), 2)
  _assert_same_batches(default, explicit)


def test_batch_size_must_split_over_the_shards():
  with pytest.raises(BatchError, match='multiple of the 4 shards'):
    pipeline.train_loader(IDS, batch_size=10, seed=0, shard_index=0, shard_count=4)
  with pytest.raises(ValueError, match='shard_index'):
    pipeline.train_loader(IDS, batch_size=8, seed=0, shard_index=2, shard_count=2)


def test_transform_sees_the_preprocessed_batch(tiny_train):
  def add_flip(batch):
    assert batch['image'].dtype == np.float32
    return {**batch, 'flipped': batch['image'][:, :, ::-1]}

  batch = next(pipeline.train_loader(tiny_train, batch_size=8, seed=0, transform=add_flip))
  np.testing.assert_array_equal(batch['flipped'], batch['image'][:, :, ::-1])


def test_restored_iterator_continues_exactly(tiny_train):
  # 200 examples in batches of 64: the resumed stretch crosses an epoch boundary.
  iterator = pipeline.train_loader(tiny_train, batch_size=64, seed=7)
  _take(iterator, 2)
  state = json.loads(json.dumps(iterator.get_state()))  # What a JSON checkpoint keeps.
  expected = _take(iterator, 3)
  resumed = pipeline.train_loader(tiny_train, batch_size=64, seed=7)
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 3), expected)


def test_iterator_state_in_an_orbax_checkpoint(tiny_train, tmp_path):
  handlers = {'data': grain.checkpoint.CheckpointHandler()}
  iterator = pipeline.train_loader(tiny_train, batch_size=32, seed=0)
  _take(iterator, 4)
  with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  expected = _take(iterator, 2)
  resumed = pipeline.train_loader(tiny_train, batch_size=32, seed=0)
  with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as manager:
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  _assert_same_batches(_take(resumed, 2), expected)


def test_eval_batches_pad_the_last_batch_with_a_mask(tiny_test):
  batches = list(pipeline.eval_batches(tiny_test, batch_size=32))
  assert len(batches) == 4  # ceil(100 / 32)
  for batch in batches:
    assert batch['image'].shape == (32, 28, 28, 1) and batch['image'].dtype == np.float32
    assert batch['mask'].shape == (32,) and batch['mask'].dtype == np.float32
  np.testing.assert_array_equal(batches[-1]['mask'], [1.0] * 4 + [0.0] * 28)
  assert sum(b['mask'].sum() for b in batches) == 100
  # One ordered pass: the real rows are the split in order.
  whole = pipeline.load_split(tiny_test)
  labels = np.concatenate([b['label'] for b in batches])[:100]
  np.testing.assert_array_equal(labels, whole['label'])
  np.testing.assert_array_equal(batches[1]['image'], whole['image'][32:64])


def test_eval_batches_shard_evenly():
  shards = [list(pipeline.eval_batches(IDS, batch_size=16, shard_index=i, shard_count=2))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 7
  real = np.concatenate([b['id'][b['mask'] == 1] for shard in shards for b in shard])
  np.testing.assert_array_equal(np.sort(real), np.arange(100))


def test_load_split(tiny_test):
  arrays = pipeline.load_split(tiny_test)
  assert arrays['image'].shape == (100, 28, 28, 1) and arrays['image'].dtype == np.float32
  assert arrays['label'].shape == (100,) and arrays['label'].dtype == np.int32
