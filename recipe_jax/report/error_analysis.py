"""The error analysis written into DIR/analysis/ (every finished train run, the evaluate stage,
squeeze's ensemble): the confusion matrix and per-class table as CSV, the confusion matrix, the
reliability diagram and the most confident mistakes as pictures, beside the verdicts that
diagnose/analysis.py computes."""
import csv
import os

import numpy as np

from recipe_jax import files, multihost
from recipe_jax.data import datasets as data
from recipe_jax.diagnose import analysis, data_checks
from recipe_jax.engine import evaluate
from recipe_jax.report import plots


def write(directory: str, probs, labels, x, cfg, dataset=None, split: str = 'val',
          history=None) -> tuple:
  """Writes the analysis files into `directory`; returns (verdicts, images by verdict)."""
  files.makedirs(directory)
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  num_classes = probs.shape[-1]
  counts = analysis.confusion_matrix(labels, probs.argmax(-1), num_classes)
  stats = analysis.per_class(counts)
  ece, bins = analysis.calibration(probs, labels, cfg.calibration_bins)
  confusions = analysis.top_confusions(counts, cfg.top_confusions)
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
  found = analysis.verdicts(counts, stats, ece, confusions, cfg, history, split, structure)
  images = {'confusions': [os.path.join(directory, 'confusion_matrix.png')],
            'calibration': [os.path.join(directory, 'reliability.png')]}
  plots.confusion(images['confusions'][0], counts, f'confusion on {split} ({len(labels)})')
  plots.reliability(images['calibration'][0], probs.max(-1), probs.argmax(-1) == labels, ece,
                    len(bins))
  wrong = analysis.most_confident_wrong(probs, labels, cfg.examples)
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
  x, y = data.split_arrays(exp.dataset, cfg.split)
  probs = evaluate.probabilities(exp, state, x)
  found, images = write(os.path.join(workdir, 'analysis'), probs, y, x, cfg, exp.dataset,
                        cfg.split, history)
  evidence = {v.check: v.evidence for v in found}
  metrics = {f'{cfg.split}_accuracy': evidence['confusions']['accuracy'],
             f'{cfg.split}_ece': evidence['calibration']['ece']}
  return found, images, metrics
