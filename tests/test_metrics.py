"""Metric functions against hand-computed values."""

import numpy as np

from jaxpretrain import metrics


def test_accuracy_and_mask():
  logits = np.array([[2, 1], [0, 3], [5, 0], [0, 1]], np.float32)
  labels = np.array([0, 1, 1, 0])
  assert metrics.accuracy(logits=logits, labels=labels) == 0.5
  assert metrics.accuracy(logits=logits, labels=labels, where=[1, 1, 0, 0]) == 1.0


def test_macro_f1_by_hand():
  logits = np.eye(3)[[0, 0, 1, 2, 2]]
  labels = np.array([0, 1, 1, 2, 0])
  # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 1, fn 1 -> 2/3; class 2: tp 1, fp 1 -> 2/3
  np.testing.assert_allclose(metrics.macro_f1(logits=logits, labels=labels),
                             (0.5 + 2 / 3 + 2 / 3) / 3)


def test_mean_accumulator_is_exact_over_uneven_batches():
  acc = metrics.MeanAccumulator()
  acc.update({'loss': 1.0, 'weight': 3})
  acc.update({'loss': 3.0, 'weight': 1})
  assert acc.result() == {'loss': 1.5, 'examples': 4.0}


def test_perplexity_and_mse():
  assert metrics.perplexity(0.0) == 1.0
  assert metrics.mean_squared_error(predictions=[1, 2], targets=[1, 4]) == 2.0
