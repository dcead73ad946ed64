"""Is a run's result its config's, or its seed's luck? The replicate stage's verdicts, as plain
functions of the numbers ("replicate their results closely, then multiple times").

- `seed_position`: where the original run's metric sits among other seeds of the same config.
  A prediction interval (Student t) for one more seed, from the others' mean and spread: outside
  it, the original is a seed that good (or bad) far more rarely than the interval allows.
- `reproduction`: the original seed trained again. On the same code, versions, data and machine
  it is bit-identical; when it is not, the words name what changed (from the run's provenance
  and data records), which is the cause to look at before any seed statistics.
"""
import numpy as np

from recipe_jax.config import selection
from recipe_jax.diagnose import noise
from recipe_jax import words
from recipe_jax.verdicts import Verdict


def resolution(metric: str, examples: int | None) -> float:
  """The smallest difference the metric can show: one validation example, for an accuracy."""
  return 1.0 / examples if metric.endswith('accuracy') and examples else 0.0


def seed_position(original: float, others: list, metric: str, interval: float,
                  examples: int | None = None, seed: int = 0,
                  reproduced: bool = True) -> Verdict:
  """PASS when the original lies inside the `interval` prediction interval of one more seed;
  WARN above it (a lucky seed: report the mean, not the run) or below (an unlucky one). The
  spread is never taken below the metric's resolution: seeds that agree exactly do not make a
  one-example difference significant."""
  values = np.asarray(others, np.float64)
  if not np.all(np.isfinite(values)) or not np.isfinite(original):
    return Verdict('seed_position', 'WARN', f'seed {seed}: {words.metric_name(metric)} is not a '
                   f'number for the run ({original}) or a seed ({values.tolist()}): no spread '
                   'to place it in', {'original': original, 'others': values.tolist()},
                   cause='metric_not_finite')
  n = len(values)
  mean, std, low, high = noise.prediction_interval(values, interval, resolution(metric, examples))
  spread = max(std, resolution(metric, examples))
  better = int(np.sum(selection.sign(metric) * (values - original) > 0))
  name = words.metric_name(metric)
  spread_words = (f'{n} other seeds give {mean:.4f} +- {std:.4f}, and one more seed falls in '
                  f'[{low:.4f}, {high:.4f}] {interval:.0%} of the time')
  evidence = {'original': original, 'seed': seed, 'others': values.tolist(), 'mean': mean,
              'std': std, 'interval': [low, high], 'level': interval,
              'z': (original - mean) / spread if spread else 0.0, 'seeds_better': better}
  if low <= original <= high:
    return Verdict('seed_position', 'PASS',
                   f'seed {seed}: {name} {original:.4f} is one of the config\'s usual results '
                   f'({spread_words}; {better} of {n} did better)', evidence)
  lucky = selection.sign(metric) * (original - mean) > 0
  evidence['lucky'] = lucky
  changed = ('' if reproduced else
             '; the same seed no longer gives it either (see reproduced): what changed since, '
             'not the seed, moved the result')
  if lucky:
    summary = (f'seed {seed} was a lucky seed: {name} {original:.4f} lies outside what the '
               f'config gives ({spread_words}); report {mean:.4f} +- {std:.4f}, and expect a '
               f'rerun to land there{changed}')
  else:
    summary = (f'seed {seed} was an unlucky seed: {name} {original:.4f} is worse than what '
               f'the config gives ({spread_words}); the config is better than that run '
               f'says{changed}')
  return Verdict('seed_position', 'WARN', summary, evidence,
                 cause='lucky_seed' if lucky else 'unlucky_seed')


def reproduction(recorded: float, again: float, metric: str, seed: int,
                 causes: list[str]) -> Verdict:
  """PASS when the original seed gives the recorded metric again (the pipeline is
  bit-identical on the same code and machine); WARN naming `causes` (what differs from the
  run's records) when it does not, or saying that nothing recorded differs."""
  name = words.metric_name(metric)
  evidence = {'seed': seed, 'recorded': recorded, 'again': again, 'causes': causes}
  if again == recorded:
    return Verdict('reproduced', 'PASS', f'seed {seed} trained again gives {name} '
                   f'{again:.4f}, exactly as the run recorded', evidence)
  why = ('what differs from the run\'s records: ' + '; '.join(causes) if causes else
         'the code, versions, data and machine all match the run\'s records, so the training '
         'is not deterministic here (a nondeterministic op, or a changed file outside git)')
  return Verdict('reproduced', 'WARN', f'seed {seed} trained again gives {name} {again:.4f}, '
                 f'the run recorded {recorded:.4f} ({again - recorded:+.4f}); {why}', evidence)
