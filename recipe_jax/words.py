"""Numbers and metric names as a person reads them: in the console, the reports and the plots."""
import numpy as np

from recipe_jax.causes import CAUSES

WORDS = {'eval': 'validation', 'val': 'validation', 'us': 'µs', 'ece': 'ECE', 'lr': 'LR',
         'swa': 'SWA', 'ema': 'EMA', 'tta': 'TTA',
         'sha256': 'SHA-256'}


def metric_name(key: str) -> str:
  """'best_eval_accuracy' -> 'best validation accuracy'."""
  return ' '.join(WORDS.get(part, part) for part in key.split('_'))


def number(value, key: str = '') -> str:
  """A number to the precision it has: accuracies as percentages with one decimal, other
  floats with 3 significant digits, integers whole."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if key.endswith('accuracy') and 0 <= value <= 1:
    return f'{100 * value:.1f}%'
  return f'{value:.3g}'


def beside(value: float, threshold: float, digits: int = 3) -> str:
  """`value` to `digits` significant digits, or more (up to 6) until the words read on the same
  side of `threshold` as the value is: 0.0495 against 0.05 is '0.0495', never '0.050'; closer
  than 6 digits tell, 'just under 0.1'."""
  side = lambda v: (v > threshold) - (v < threshold)
  for d in range(digits, 7):
    text = f'{value:.{d}g}'
    if side(float(text)) == side(value):
      return text
  return f"just {'under' if value < threshold else 'over'} {threshold:g}"


def settings(overrides: dict) -> str:
  """'model.width=51, optimizer.learning_rate=0.00206': values to 3 significant digits."""
  return ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in overrides.items())


def headline(metrics: dict) -> str:
  """A stage's headline numbers in words: 'ensemble test accuracy 98.8%, members 5'."""
  return ', '.join(f'{metric_name(k)} {number(v, k)}' for k, v in metrics.items()
                   if v is not None and not isinstance(v, (dict, list)))


def final_accuracy(metrics_by_stage: dict):
  """(words, value) of the last word on test accuracy in a workdir: the ensemble, else the
  best tuned trial, else a train run; None when there is none."""
  for stage, key, words in (('squeeze', 'ensemble_test_accuracy', 'the ensemble (squeeze)'),
                            ('tune', 'best_test_accuracy', 'the best tuned trial'),
                            ('train', 'test_accuracy', 'the trained model'),
                            ('evaluate', 'test_accuracy', 'the evaluated model')):
    value = metrics_by_stage.get(stage, {}).get(key)
    if value is not None:
      return words, value
  return None


def sentence(verdict) -> str:
  """A verdict's sentence as every page and the console show it (a Verdict or its JSON dict):
  the check's own words, and for a symptom the cause diagnosis found (`diagnosed`)."""
  get = verdict.get if isinstance(verdict, dict) else lambda key: getattr(verdict, key)
  said, cause = get('summary'), get('cause')
  if not (get('evidence') or {}).get('diagnosed'):
    return said
  if cause == 'ambiguous':
    return f'{said}; ambiguous (see diagnosis)'
  return f'{said}; most likely cause: {CAUSES[cause]} (see diagnosis)'
