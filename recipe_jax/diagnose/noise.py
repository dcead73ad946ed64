"""Is a difference beyond noise? The one rule, and every stage that compares two numbers calls it.

The rule: a difference between two measurements is beyond noise when it exceeds twice its
standard error (about 95% two-sided). The error adds what each measurement can vary by:
- over seeds, the spread of the runs, var / n per arm (`difference`);
- for an accuracy, the binomial error of the split it was measured on, p (1 - p) / n, which
  more seeds cannot lower: the error is never taken below it (`difference`, `splits_apart`);
- for two models on the same examples, only the examples one gets right and the other wrong
  count: McNemar's exact test (`mcnemar`, p < ALPHA), and how many examples would resolve the
  difference at 5% and 80% power (`examples_to_resolve`, Connor 1987);
- for one run against the spread of others, the t prediction interval of one more seed
  (`prediction_interval`), never narrower than the metric's resolution.
Fewer than 2 seeds give no estimate: every difference is inside the noise.
"""
import json
import math

import numpy as np
from scipy import stats

ALPHA = 0.05
Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power
STANDARD_ERRORS = 2.0  # beyond noise: more than this many standard errors apart
BASELINE = 'baseline'  # the group the others are measured against (`group_rows`)


def binomial_variance(accuracy: float, examples: int) -> float:
  """The variance of an accuracy measured on `examples` examples (0 without any)."""
  return accuracy * (1 - accuracy) / examples if examples else 0.0


def difference(base: list, other: list, metric: str) -> dict:
  """`other`'s mean `metric` minus `base`'s (lists of run summaries), and whether that delta is
  beyond the noise: the seeds' part 2 sqrt(var_b / n_b + var_v / n_v), never below the
  validation split's part for an accuracy (the binomial error of each mean)."""
  def split_variance(summaries, mean):
    if not metric.endswith('accuracy'):
      return 0.0
    return binomial_variance(mean, min((s.get('val_examples') or 0) for s in summaries))

  b = np.array([s[metric] for s in base], np.float64)
  v = np.array([s[metric] for s in other], np.float64)
  delta = v.mean() - b.mean()
  noise = seed_noise = split_noise = float('inf')
  if min(len(b), len(v)) > 1:
    seeds = b.var(ddof=1) / len(b) + v.var(ddof=1) / len(v)
    split = split_variance(base, b.mean()) + split_variance(other, v.mean())
    seed_noise, split_noise = STANDARD_ERRORS * np.sqrt(seeds), STANDARD_ERRORS * np.sqrt(split)
    noise = max(seed_noise, split_noise)
  return {'delta': delta, 'noise': 'inside noise' if abs(delta) <= noise else 'beyond noise',
          'noise_level': noise,
          # the seeds' part falls with more seeds, the validation split's does not
          'seed_noise_level': seed_noise, 'split_noise_level': split_noise}


def group_rows(summaries: dict, overrides: dict, metric: str) -> list:
  """One row per group of runs ({group: [summary, ...]}, BASELINE among them): the metric's
  mean and std over seeds, the delta against BASELINE and whether it is beyond the noise
  (`difference`), the train - validation gap, the test accuracy (reported, never used)."""
  def values(name, key):
    return np.array([s[key] for s in summaries[name]], np.float64)

  rows = []
  for name in summaries:
    v = values(name, metric)
    gap = values(name, 'train_accuracy') - values(name, 'eval_accuracy')
    against = difference(summaries[BASELINE], summaries[name], metric)
    if name == BASELINE:
      against['noise'] = ''
    rows.append({'variant': name, 'overrides': json.dumps(overrides[name]), 'seeds': len(v),
                 'mean': v.mean(), 'std': v.std(ddof=1) if len(v) > 1 else 0.0, **against,
                 'train_val_gap': gap.mean(),
                 'test_accuracy': values(name, 'test_accuracy').mean()})
  return rows


def splits_apart(accuracy_a: float, examples_a: int, accuracy_b: float,
                 examples_b: int) -> float:
  """How many standard errors accuracy_a lies above accuracy_b, two independent splits."""
  error = math.sqrt(binomial_variance(accuracy_a, examples_a) +
                    binomial_variance(accuracy_b, examples_b))
  return (accuracy_a - accuracy_b) / max(error, 1e-9)


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


def prediction_interval(values, level: float, resolution: float = 0.0) -> tuple:
  """(mean, std, low, high): where one more seed falls `level` of the time, from the others'
  spread (a t interval), the spread never taken below `resolution`: seeds that agree exactly
  do not make a one-example difference significant."""
  values = np.asarray(values, np.float64)
  n = len(values)
  mean, std = values.mean(), values.std(ddof=1)
  spread = max(std, resolution)
  half = stats.t.ppf(0.5 + level / 2, n - 1) * spread * np.sqrt(1 + 1 / n)
  return mean, std, mean - half, mean + half


def seeds_to_resolve(delta, seed_noise, split_noise, seeds: int):
  """Seeds per arm at which `delta` would lie beyond the noise: the seeds' part (twice their
  standard error) falls as 1/sqrt(seeds), the validation split's part does not. None without an
  estimate; inf when the split's part alone already covers the difference."""
  finite = lambda v: v is not None and math.isfinite(v)
  if seeds < 2 or not finite(seed_noise):
    return None
  if not delta or (finite(split_noise) and split_noise >= abs(delta)):
    return math.inf
  return max(seeds + 1, math.ceil(seeds * (seed_noise / abs(delta)) ** 2))


def split_factor(delta, split_noise) -> str:
  """How many times the validation examples would put `delta` beyond the split's error (which
  falls as 1/sqrt(examples)), rounded up to a tenth."""
  return f'{math.ceil(round(10 * (split_noise / abs(delta)) ** 2, 6)) / 10:g}'
