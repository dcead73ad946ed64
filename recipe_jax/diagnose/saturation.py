"""Is the test set saturated? ("If test set starts to get saturated, it's time to create a more
effective test set.")

A test set of n examples measures an accuracy only to within its binomial error, and tells two
models apart only through the examples one gets right and the other wrong. `test_saturation`
states, for the final model: the errors left and the accuracy's 95% interval (Wilson); against
the runner-up on the same examples, whether McNemar's exact test separates them (p < noise.ALPHA) and
about how many test examples would resolve their difference (a paired test at 80% power, from
the share of examples they disagree on; Connor 1987).
"""
import numpy as np

from recipe_jax.diagnose import noise
from recipe_jax.verdicts import Verdict

MIN_ERRORS = 20  # fewer errors left: every later improvement is a handful of examples


def verdict(labels, predictions: dict) -> Verdict:
  """`predictions`: {model name: predicted classes on the test split}, the final model first,
  then the runner-up (optional). WARN when fewer than MIN_ERRORS errors are left, or when the
  test set cannot tell the two apart (McNemar p >= noise.ALPHA) though they differ; else PASS."""
  labels = np.ravel(labels)
  names = list(predictions)
  if not len(labels):
    return Verdict('test_saturation', 'WARN', 'the test split is empty: nothing measures the '
                   'final model', {'examples': 0, 'models': names})
  correct = {name: np.ravel(predictions[name]) == labels for name in names}
  n, final = len(labels), correct[names[0]]
  errors = int(n - final.sum())
  low, high = noise.accuracy_interval(final)
  evidence = {'examples': n, 'errors_left': errors, 'accuracy': float(final.mean()),
              'interval_95': [low, high], 'models': names, 'alpha': noise.ALPHA,
              'min_errors': MIN_ERRORS}
  line = (f'{names[0]}: {errors} test errors left of {n}; accuracy {final.mean():.2%} '
          f'(95% interval {low:.2%} to {high:.2%})')
  problems = []
  if errors < MIN_ERRORS:
    problems.append(f'fewer than {MIN_ERRORS} errors are left: a better model is a few examples '
                    'apart; a larger or harder test set would measure it')
  if len(names) > 1:
    paired = noise.mcnemar(final, correct[names[1]])
    needed = noise.examples_to_resolve(paired['a_only'], paired['b_only'], n)
    evidence.update(paired, runner_up=names[1], examples_to_resolve=needed)
    apart = (f'{names[0]} is right on {paired["a_only"]} examples {names[1]} gets wrong, and '
             f'wrong on {paired["b_only"]} it gets right (McNemar p = {paired["p_value"]:.2g})')
    if paired['a_only'] + paired['b_only'] == 0:
      line += f'; {names[1]} gets the same examples right and wrong: nothing to resolve'
    elif paired['a_only'] == paired['b_only']:
      line += (f'; {names[1]} has the same accuracy on this test set, right and wrong on '
               f'{paired["a_only"]} different examples each: no difference to resolve')
    elif paired['p_value'] < noise.ALPHA:
      line += f'; the test set tells it from {names[1]}: {apart}'
    else:
      problems.append(f'the test set cannot tell it from {names[1]}: {apart}; about '
                      f'{needed:,.0f} test examples would resolve a difference this size '
                      f'({needed / n:.1f}x this test set)')
  if problems:
    return Verdict('test_saturation', 'WARN', f'{line}; ' + '; '.join(problems), evidence)
  return Verdict('test_saturation', 'PASS', line, evidence)
