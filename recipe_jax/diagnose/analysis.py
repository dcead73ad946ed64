"""Error analysis of a model's predictions: where is it confused? (recipe step 6)

Pure numpy on (probabilities, labels); `write` turns them into DIR/analysis/: the confusion
matrix (CSV and picture), per-class precision / recall / F1, calibration (expected calibration
error with equal-mass bins, a reliability diagram), the most confident mistakes drawn as inputs,
and verdicts:

- `class_recall`: WARN when a class's recall is more than `analysis.max_recall_gap` below the
  median recall of all classes (a class the model neglects; look at its examples and labels);
- `calibration`: WARN when the ECE exceeds `analysis.max_ece` (0.05): the probabilities are
  not to be read as confidences (temperature scaling or an ensemble helps);
- `confusions`: the top confusions in words;
- `still_improving`: whether validation accuracy was still rising at the end of the run
  ("leave it training").
"""
import csv
import os

import numpy as np

from recipe_jax import files
from recipe_jax.data import datasets as data
from recipe_jax.engine import evaluate, multihost
from recipe_jax.diagnose import analysis_checks, data_checks, registry
from recipe_jax.report import plots
from recipe_jax.runs import finished as runs

FAMILY = 'recipe_jax.diagnose.analysis_checks'
still_improving = analysis_checks.still_improving


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


def write(directory: str, probs, labels, x, cfg, dataset=None, split: str = 'val',
          history=None) -> tuple:
  """Writes the analysis files into `directory`; returns (verdicts, images by verdict)."""
  files.makedirs(directory)
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  num_classes = probs.shape[-1]
  counts = confusion_matrix(labels, probs.argmax(-1), num_classes)
  stats = per_class(counts)
  ece, bins = calibration(probs, labels, cfg.calibration_bins)
  confusions = top_confusions(counts, cfg.top_confusions)
  _write_csv(os.path.join(directory, 'confusion_matrix.csv'), ['true \\ predicted',
             *range(num_classes)], [[c, *row] for c, row in enumerate(counts)])
  _write_csv(os.path.join(directory, 'per_class.csv'),
             ['class', 'precision', 'recall', 'f1', 'support'],
             [[c, *(f'{stats[k][c]:.4f}' for k in ('precision', 'recall', 'f1')),
               int(stats['support'][c])] for c in range(num_classes)])
  structure = None
  if dataset is not None and len(labels) == len(getattr(dataset, f'{split}_rows')):
    structure = data_checks.label_structure(labels, probs.argmax(-1),
                                            getattr(dataset, f'{split}_rows'), num_classes)
  found = verdicts(counts, stats, ece, confusions, cfg, history, split, structure)
  images = {'confusions': [os.path.join(directory, 'confusion_matrix.png')],
            'calibration': [os.path.join(directory, 'reliability.png')]}
  plots.confusion(images['confusions'][0], counts, f'confusion on {split} ({len(labels)})')
  plots.reliability(images['calibration'][0], probs.max(-1), probs.argmax(-1) == labels, ece,
                    len(bins))
  wrong = most_confident_wrong(probs, labels, cfg.examples)
  if len(wrong):
    predicted = probs.argmax(-1)
    rows = data.source_rows(dataset, split, wrong) if dataset is not None else {}
    ids = rows.get('source_rows', wrong.tolist())
    titles = [f'row {r}: {labels[i]} -> {predicted[i]} ({probs[i, predicted[i]]:.2f})'
              for r, i in zip(ids, wrong)]
    path = os.path.join(directory, 'most_confident_wrong.png')
    plots.grid(path, [x[i] for i in wrong], titles, columns=4,
               title=f'most confident mistakes on {split}: row in the source split: given label '
               '-> predicted (probability)')
    images['class_recall'] = [path]
    found[0].evidence['most_confident_wrong'] = {
        'indices': wrong.tolist(), **rows, 'labels': labels[wrong].tolist(),
        'predicted': predicted[wrong].tolist(),
        'probability': probs[wrong, predicted[wrong]].tolist()}
  return found, images


def _write_csv(path: str, header: list, rows: list) -> None:
  if not multihost.is_leader():
    return
  with files.writing_text(path) as f:
    out = csv.writer(f)
    out.writerow(header)
    out.writerows(rows)


def written(workdir: str, images: dict) -> list:
  """The analysis files written (no mistakes: no most_confident_wrong.png), workdir-relative."""
  return ['analysis/per_class.csv', *(os.path.relpath(p, workdir)
                                      for paths in images.values() for p in paths)]


def analyse(exp, state, workdir: str, history=None) -> tuple:
  """(verdicts, images, metrics) of `state` on the configured split, files in DIR/analysis/."""
  cfg = exp.config.analysis
  x, y = runs.split_arrays(exp.dataset, cfg.split)
  probs = evaluate.probabilities(exp, state, x)
  found, images = write(os.path.join(workdir, 'analysis'), probs, y, x, cfg,
                                 exp.dataset, cfg.split, history)
  evidence = {v.check: v.evidence for v in found}
  metrics = {f'{cfg.split}_accuracy': evidence['confusions']['accuracy'],
             f'{cfg.split}_ece': evidence['calibration']['ece']}
  return found, images, metrics
