"""Error analysis of a model's predictions: where is it confused? (recipe step 6)

Pure numpy on (probabilities, labels): the confusion matrix, per-class precision / recall / F1,
calibration (expected calibration error with equal-mass bins), the most confident mistakes, and
the verdicts of the registered family (analysis_checks.py: each check's what and when is
described there once); report/error_analysis.py writes them into DIR/analysis/ with their
pictures.
"""
import numpy as np

from recipe_jax.diagnose import analysis_checks, registry

FAMILY = 'recipe_jax.diagnose.analysis_checks'


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
  return counts


def per_class(counts: np.ndarray) -> dict:
  """Precision, recall, F1 and support per class (0 where a class is never predicted / seen)."""
  correct = np.diag(counts).astype(np.float64)
  support, predicted = counts.sum(1), counts.sum(0)
  precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
  recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
  both = precision + recall
  f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(correct), where=both > 0)
  return {'precision': precision, 'recall': recall, 'f1': f1, 'support': support}


def top_confusions(counts: np.ndarray, k: int = 5) -> list:
  """The k most frequent (true, predicted) mistakes, most frequent first."""
  off = counts.copy()
  np.fill_diagonal(off, 0)
  order = np.argsort(-off, axis=None, kind='stable')[:k]
  found = []
  for true, predicted in zip(*np.unravel_index(order, off.shape)):
    if off[true, predicted] == 0:
      break
    found.append({'true': int(true), 'predicted': int(predicted),
                  'count': int(off[true, predicted]),
                  'fraction_of_class': float(off[true, predicted] / counts[true].sum())})
  return found


def calibration(probs: np.ndarray, labels, num_bins: int = 15) -> tuple:
  """(expected calibration error, bins) with equal-mass bins over the top-class confidence:
  ECE = sum over bins of (bin size / N) * |accuracy - mean confidence|."""
  confidence = probs.max(-1)
  correct = (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)
  order = np.argsort(confidence, kind='stable')
  bins, ece = [], 0.0
  for members in np.array_split(order, min(num_bins, len(order))):
    conf, acc = float(confidence[members].mean()), float(correct[members].mean())
    ece += len(members) / len(order) * abs(acc - conf)
    bins.append({'confidence': conf, 'accuracy': acc, 'count': len(members)})
  return ece, bins


def most_confident_wrong(probs: np.ndarray, labels, k: int) -> np.ndarray:
  """Indices of the k wrong predictions with the highest predicted probability, highest first."""
  predicted = probs.argmax(-1)
  wrong = np.flatnonzero(predicted != np.asarray(labels))
  confidence = probs[wrong, predicted[wrong]]
  return wrong[np.argsort(-confidence, kind='stable')[:k]]


def verdicts(counts, stats, ece, confusions, cfg, history=None, split='val',
             structure: dict | None = None) -> list:
  """The error analysis' verdicts: the registered checks of its family, in order."""
  measured = analysis_checks.Measured(counts, stats, ece, confusions, cfg, history, split,
                                      structure)
  found = [check.run(measured) for check in registry.family(FAMILY)]
  return [v for v in found if v is not None]
