"""Sources: batched reads, subsets and the stratified labelled subset."""

import numpy as np
import pytest

from jaxpretrain.data import pipeline, sources


def test_read_batch_stacks_features(tiny_train):
  batch = sources.read_batch(tiny_train, [5, 0, 5])
  assert batch['image'].shape == (3, 28, 28, 1) and batch['image'].dtype == np.uint8
  np.testing.assert_array_equal(batch['image'][1], tiny_train[0]['image'])
  np.testing.assert_array_equal(batch['image'][0], batch['image'][2])


def test_labelled_subset_is_stratified_and_disjoint(tiny_train):
  train, validation = sources.labelled_subset(tiny_train, per_class=5, seed=0,
                                              validation_per_class=3)
  labels = sources.read_all(tiny_train)['label']
  assert np.bincount(labels[train], minlength=10).tolist() == [5] * 10
  assert np.bincount(labels[validation], minlength=10).tolist() == [3] * 10
  assert not set(train) & set(validation)
  again, _ = sources.labelled_subset(tiny_train, per_class=5, seed=0, validation_per_class=3)
  other, _ = sources.labelled_subset(tiny_train, per_class=5, seed=1, validation_per_class=3)
  np.testing.assert_array_equal(train, again)
  assert not np.array_equal(train, other)


def test_labelled_subset_needs_enough_examples(tiny_train):
  with pytest.raises(ValueError, match='fewer than'):
    sources.labelled_subset(tiny_train, per_class=100, seed=0)


def test_subset_is_a_source_for_the_pipeline(tiny_train):
  train, _ = sources.labelled_subset(tiny_train, per_class=6, seed=0)
  labelled = sources.subset(tiny_train, train)
  assert len(labelled) == 60
  np.testing.assert_array_equal(labelled[3]['image'], tiny_train[int(train[3])]['image'])
  batches = list(pipeline.train_loader(labelled, batch_size=20, seed=0, num_epochs=1))
  seen = np.sort(np.concatenate([b['label'] for b in batches]))
  np.testing.assert_array_equal(seen, np.repeat(np.arange(10), 6))
  with pytest.raises(IndexError):
    sources.subset(tiny_train, [len(tiny_train)])


def test_in_memory_source_reads_the_same_batches(tiny_train):
  cached = sources.in_memory(tiny_train)
  assert len(cached) == len(tiny_train)
  idx = [5, 0, 17, 5]
  expected = sources.read_batch(tiny_train, idx)
  for k, v in sources.read_batch(cached, idx).items():
    np.testing.assert_array_equal(v, expected[k])
  sub = sources.subset(cached, [3, 4])
  np.testing.assert_array_equal(sources.read_all(sub)['image'],
                                sources.read_batch(tiny_train, [3, 4])['image'])
