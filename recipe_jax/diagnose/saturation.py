"""Is the test set saturated? ("If test set starts to get saturated, it's time to create a more
effective test set.")

A test set of n examples measures an accuracy only to within its binomial error, and tells two
models apart only through the examples one gets right and the other wrong. `test_saturation`
states, for the final model: the errors left and the accuracy's 95% interval (Wilson); against
the runner-up on the same examples, whether McNemar's exact test separates them (p < ALPHA) and
about how many test examples would resolve their difference (a paired test at 80% power, from
the share of examples they disagree on; Connor 1987).
"""
import math

import numpy as np
from scipy import stats

from recipe_jax.report.results import Verdict

ALPHA = 0.05
Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power
MIN_ERRORS = 20  # fewer errors left: every later improvement is a handful of examples


def accuracy_interval(correct: np.ndarray) -> tuple[float, float]:
  """The 95% Wilson interval of the accuracy behind per-example correctness."""
  found = stats.binomtest(int(np.sum(correct)), len(correct)).proportion_ci(0.95, 'wilson')
  return float(found.low), float(found.high)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
  """McNemar's exact test on paired correctness: {'a_only', 'b_only', 'p_value'}."""
  a_only = int(np.sum(correct_a & ~correct_b))
  b_only = int(np.sum(~correct_a & correct_b))
  p = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
  return {'a_only': a_only, 'b_only': b_only, 'p_value': float(p)}


def examples_to_resolve(a_only: int, b_only: int, n: int) -> float:
  """About how many test examples a paired test needs to resolve the difference observed
  (a_only - b_only of n) at 5% and 80% power, if the models kept disagreeing on the same share
  of examples; inf when they do not differ."""
  q, d = (a_only + b_only) / n, abs(a_only - b_only) / n
  if d == 0:
    return math.inf
  return (Z_ALPHA * math.sqrt(q) + Z_POWER * math.sqrt(max(q - d * d, 0.0))) ** 2 / (d * d)


def verdict(labels, predictions: dict) -> Verdict:
  """`predictions`: {model name: predicted classes on the test split}, the final model first,
  then the runner-up (optional). WARN when fewer than MIN_ERRORS errors are left, or when the
  test set cannot tell the two apart (McNemar p >= ALPHA) though they differ; else PASS."""
  labels = np.ravel(labels)
  names = list(predictions)
  if not len(labels):
    return Verdict('test_saturation', 'WARN', 'the test split is empty: nothing measures the '
                   'final model', {'examples': 0, 'models': names})
  correct = {name: np.ravel(predictions[name]) == labels for name in names}
  n, final = len(labels), correct[names[0]]
  errors = int(n - final.sum())
  low, high = accuracy_interval(final)
  evidence = {'examples': n, 'errors_left': errors, 'accuracy': float(final.mean()),
              'interval_95': [low, high], 'models': names, 'alpha': ALPHA,
              'min_errors': MIN_ERRORS}
  line = (f'{names[0]}: {errors} test errors left of {n}; accuracy {final.mean():.2%} '
          f'(95% interval {low:.2%} to {high:.2%})')
  problems = []
  if errors < MIN_ERRORS:
    problems.append(f'fewer than {MIN_ERRORS} errors are left: a better model is a few examples '
                    'apart; a larger or harder test set would measure it')
  if len(names) > 1:
    paired = mcnemar(final, correct[names[1]])
    needed = examples_to_resolve(paired['a_only'], paired['b_only'], n)
    evidence.update(paired, runner_up=names[1], examples_to_resolve=needed)
    apart = (f'{names[0]} is right on {paired["a_only"]} examples {names[1]} gets wrong, and '
             f'wrong on {paired["b_only"]} it gets right (McNemar p = {paired["p_value"]:.2g})')
    if paired['a_only'] + paired['b_only'] == 0:
      line += f'; {names[1]} gets the same examples right and wrong: nothing to resolve'
    elif paired['a_only'] == paired['b_only']:
      line += (f'; {names[1]} has the same accuracy on this test set, right and wrong on '
               f'{paired["a_only"]} different examples each: no difference to resolve')
    elif paired['p_value'] < ALPHA:
      line += f'; the test set tells it from {names[1]}: {apart}'
    else:
      problems.append(f'the test set cannot tell it from {names[1]}: {apart}; about '
                      f'{needed:,.0f} test examples would resolve a difference this size '
                      f'({needed / n:.1f}x this test set)')
  if problems:
    return Verdict('test_saturation', 'WARN', f'{line}; ' + '; '.join(problems), evidence)
  return Verdict('test_saturation', 'PASS', line, evidence)
