"""Pure metric functions and an accumulator for per-batch means."""

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike


def accuracy(*, logits: ArrayLike, labels: ArrayLike, where: ArrayLike | None = None) -> float:
  """Fraction of examples whose arg-max logit is the label."""
  correct = np.argmax(np.asarray(logits), -1) == np.asarray(labels)
  w = np.ones(correct.shape) if where is None else np.asarray(where, np.float64)
  return float(np.sum(correct * w) / max(np.sum(w), 1.0))


def confusion_matrix(*, predictions: ArrayLike, labels: ArrayLike, num_classes: int,
                     where: ArrayLike | None = None) -> np.ndarray:
  """Counts `[label, prediction]` over the examples `where` is true."""
  keep = np.ones(np.shape(labels), bool) if where is None else np.asarray(where) > 0
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels)[keep], np.asarray(predictions)[keep]), 1)
  return cm


def macro_f1(*, logits: ArrayLike, labels: ArrayLike, where: ArrayLike | None = None) -> float:
  """F1 averaged over classes (classes absent from both labels and predictions are skipped)."""
  logits = np.asarray(logits)
  cm = confusion_matrix(predictions=np.argmax(logits, -1), labels=labels,
                        num_classes=logits.shape[-1], where=where)
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(1) + cm.sum(0)
  present = support > 0
  return float(np.mean(2 * tp[present] / support[present])) if present.any() else 0.0


def mean_squared_error(*, predictions: ArrayLike, targets: ArrayLike) -> float:
  """Mean of squared differences."""
  return float(np.mean((np.asarray(predictions) - np.asarray(targets)) ** 2))


def perplexity(mean_nll: float) -> float:
  """Perplexity from a mean negative log-likelihood in nats."""
  return float(np.exp(mean_nll))


class MeanAccumulator:
  """Combines per-batch metric means into exact dataset means.

  Each update takes a dict of means plus `weight`, the number of real
  examples behind them (as returned by `make_eval_step`).
  """

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._weight = 0.0

  def update(self, metrics: Mapping[str, ArrayLike]) -> None:
    w = float(np.asarray(metrics['weight']))
    for k, v in metrics.items():
      if k != 'weight':
        self._sums[k] = self._sums.get(k, 0.0) + float(np.asarray(v)) * w
    self._weight += w

  def result(self) -> dict[str, float]:
    return {k: v / max(self._weight, 1.0) for k, v in self._sums.items()} | {
        'examples': self._weight}
