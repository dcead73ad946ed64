"""The error analysis' checks (every finished train run, the evaluate stage, the ensemble): what each
measures on the predictions of one split, when it WARNs, and its advice. `analysis.verdicts`
runs them in this order on the split's measurements (`Measured`)."""
import dataclasses

import numpy as np

from recipe_jax.diagnose import data_checks
from recipe_jax.diagnose.check_unit import Check
from recipe_jax import words
from recipe_jax.verdicts import Verdict

STAGES = ('train', 'evaluate', 'squeeze')  # squeeze: the ensemble's analysis


@dataclasses.dataclass
class Measured:
  counts: np.ndarray  # the confusion matrix, true x predicted
  stats: dict  # per class: precision, recall, f1, support
  ece: float
  confusions: list  # the top confusions, largest first
  cfg: object  # config.analysis
  history: list | None = None  # the run's evals, for still_improving
  split: str = 'val'
  structure: dict | None = None  # data_checks.label_structure of the split's rows


def still_improving(history: list, tail_fraction: float = 0.25, min_gain: float = 0.005):
  """(gain, rising): validation accuracy at the last eval minus the best before the last
  `tail_fraction` of the evals; rising when the gain is above `min_gain`."""
  accuracies = [h['eval_accuracy'] for h in history if 'eval_accuracy' in h]
  if len(accuracies) < 4:
    return None, False
  split = max(1, int(round(len(accuracies) * (1 - tail_fraction))))
  gain = float(np.mean(accuracies[-2:]) - max(accuracies[:split]))
  return gain, gain > min_gain


def class_recall(m: Measured) -> Verdict:
  recall, support = m.stats['recall'], m.stats['support']
  present = support > 0
  median = float(np.median(recall[present]))
  gap = m.cfg.max_recall_gap
  neglected = [int(c) for c in np.flatnonzero(present & (recall < median - gap))]
  evidence = {'recall': recall.tolist(), 'median_recall': median, 'max_recall_gap': gap,
              'neglected_classes': neglected}
  if neglected:
    names = ', '.join(f'{c} ({recall[c]:.2f})' for c in neglected)
    return Verdict('class_recall', 'WARN', f'recall of class {names} is more than {gap:g} below '
                   f'the median {median:.2f}: look at its examples and labels '
                   '(most_confident_wrong.png)', evidence, where=neglected)
  return Verdict('class_recall', 'PASS', f'every class within {gap:g} of the median recall '
                 f'{median:.2f} (lowest {recall[present].min():.2f})', evidence)


def calibration(m: Measured) -> Verdict:
  ece, most = m.ece, m.cfg.max_ece
  return Verdict('calibration', 'WARN' if ece > most else 'PASS',
                 f'expected calibration error {words.beside(ece, most)} on {m.split} ' + (
                     f'(> {most:g}): probabilities are not confidences; an ensemble or '
                     'temperature scaling helps' if ece > most else f'(warn above {most:g})'),
                 {'ece': ece, 'max_ece': most})


def confusions(m: Measured) -> Verdict:
  recall, present = m.stats['recall'], m.stats['support'] > 0
  accuracy = float(np.trace(m.counts) / m.counts.sum())
  if m.confusions:
    worst = int(np.argmin(np.where(present, recall, np.inf)))
    confused = '; '.join(f"{c['true']} read as {c['predicted']} {c['count']}x "
                         f"({c['fraction_of_class']:.0%} of class {c['true']})"
                         for c in m.confusions[:3])
    summary = (f'accuracy {accuracy:.3f} on {m.split}; most confused: {confused}; weakest class '
               f'{worst} (recall {recall[worst]:.2f})')
  else:
    summary = f'accuracy {accuracy:.3f} on {m.split}: no mistakes'
  evidence = {'top_confusions': m.confusions, 'accuracy': accuracy}
  if m.structure is None:
    return Verdict('confusions', 'PASS', summary, evidence)
  evidence['label_structure'] = m.structure
  if m.structure['block']:  # a row block names the labels; class pairs may be the task's own
    return Verdict('confusions', 'WARN', summary + '; ' + data_checks.describe_structure(
        {**m.structure, 'dominant_pairs': []}), evidence, cause='labels_by_rows')
  return Verdict('confusions', 'PASS', summary, evidence)


def still_improving_verdict(m: Measured) -> Verdict | None:
  gain, rising = still_improving(m.history) if m.history else (None, False)
  if gain is None:
    return None
  return Verdict('still_improving', 'PASS', (
      f'validation accuracy still rising at the end (+{gain:.3f} over the best before the '
      'last quarter): leave it training (a larger num_train_steps resumes this run)'
      if rising else f'validation accuracy has levelled off ({gain:+.3f} in the last quarter '
                     'of the evals)'), {'gain': gain, 'rising': rising})


MAX_ERROR_SHARE = 0.5  # one true class holding more of the errors than this
MIN_ERRORS = 20  # fewer errors: a share says little


def errors_in_one_class(m: Measured) -> Verdict | None:
  errors = m.counts.sum(1) - np.diag(m.counts)  # per true class
  total = int(errors.sum())
  if total < MIN_ERRORS:
    return None
  worst = int(np.argmax(errors))
  share = float(errors[worst] / total)
  evidence = {'errors_by_class': errors.tolist(), 'errors': total, 'share': share,
              'max_share': MAX_ERROR_SHARE}
  said = f'class {worst} holds {share:.0%} of the {total} errors on {m.split}'
  if share > MAX_ERROR_SHARE:
    return Verdict('errors_in_one_class', 'WARN', f'{said} (WARN over {MAX_ERROR_SHARE:.0%}): '
                   'the errors are one class\'s, not the model\'s in general', evidence,
                   where=[worst])
  return Verdict('errors_in_one_class', 'PASS', said, evidence)


def _errors_in_one_class_advice(status, e):
  return True, ('look at that class first (most_confident_wrong.png, its labels, its share of '
                'the training data): fixing it is most of what is left to gain')


def _calibration_advice(status, e):
  return True, ('act if you use the probabilities (thresholds, ranking, abstaining): '
                'temperature scaling or the ensemble fixes them; ignore if only the top class '
                'matters')


CHECKS = (
    Check('class_recall', STAGES, 'recall per class on the analysed split',
          "WARN when a class's recall is more than `analysis.max_recall_gap` (0.2) below the "
          "median class's", run=class_recall),
    Check('calibration', STAGES, 'the expected calibration error over equal-mass confidence '
          'bins (`reliability.png`)', 'WARN above `analysis.max_ece` (0.05)',
          advice=_calibration_advice, run=calibration),
    Check('confusions', STAGES, 'the top confusions in words (e.g. "9 read as 4 3x (17% of '
          'class 9)"), the weakest class, and the structure of the errors along the rows',
          'WARN when a block of rows uses the labels differently from the rest',
          causes=('labels_by_rows',), run=confusions),
    Check('still_improving', STAGES, 'validation accuracy over the last quarter of the evals',
          'never WARNs: says whether it was still rising (leave it training) or levelled off',
          run=still_improving_verdict),
    Check('errors_in_one_class', STAGES, "the largest true class's share of the split's errors",
          f'WARN when one class holds more than {MAX_ERROR_SHARE:.0%} of them (from '
          f'{MIN_ERRORS} errors)', advice=_errors_in_one_class_advice, run=errors_in_one_class),
)
