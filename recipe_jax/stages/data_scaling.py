"""stage='data_scaling': get more data, is it worth it? (recipe step 4)

Trains the config on nested random subsets of the training split (`data_scaling.fractions`,
each with `data_scaling.seeds` seeds; the validation split is the same throughout) as normal
train runs in data_scaling/fraction_<f>/seed_<s>/ (resumable, finished runs reused), fits
error = a * n^-b + c to the validation error and says what 2x and 4x the data would gain
(`recipe_jax.diagnose.learning_curve`). Output: learning_curve.png, results.csv, the `more_data` verdict.
"""
import os

import numpy as np
from recipe_jax.config import check as config_check
from recipe_jax.diagnose import learning_curve
from recipe_jax.report import plots, results as report, tables
from recipe_jax.runs import driver
from recipe_jax.verdicts import StageResult

FILES = ['data_scaling/learning_curve.png', 'data_scaling/results.csv',
         'data_scaling/report.md']


def fractions(config) -> list:
  """Of the training split the config trains on: with dataset.train_fraction=0.5 already,
  fraction 0.25 trains on an eighth of the whole split."""
  return sorted(set(float(f) for f in config.data_scaling.fractions))


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'data_scaling')
  seeds = range(config.seed, config.seed + config.data_scaling.seeds)
  summaries = driver.train_groups('data_scaling', {fraction: [(
      [_subset_config(config, fraction, seed) for seed in seeds],
      [os.path.join(out, f'fraction_{fraction:g}', f'seed_{seed}') for seed in seeds])]
      for fraction in fractions(config)})
  if summaries is None:  # preempted: the same command resumes it
    return StageResult('data_scaling', [], {}, FILES, finished=False)
  points = [{'fraction': fraction, 'seed': seed, 'examples': summary['train_examples'],
             'eval_accuracy': summary['eval_accuracy'], 'test_accuracy': summary['test_accuracy']}
            for fraction, found in summaries.items() for seed, summary in zip(seeds, found)]
  examples = [p['examples'] for p in points]
  errors = [1 - p['eval_accuracy'] for p in points]
  found = learning_curve.fit(examples, errors, seed=config.seed)
  verdict = learning_curve.verdict(found, config.data_scaling)
  tables.write_csv(os.path.join(out, 'results.csv'), points)
  image = _plot(os.path.join(out, 'learning_curve.png'), examples, errors, found)
  metrics = {'largest_n': max(examples),
             'eval_accuracy_at_largest': float(np.mean([p['eval_accuracy'] for p in points
                                                        if p['examples'] == max(examples)]))}
  if found:
    metrics.update(gain_2x=found['gain_2x'], exponent_b=found['b'], error_floor_c=found['c'])
  return report.finish(workdir, StageResult('data_scaling', [verdict], metrics, FILES),
                       f'Data scaling: {config.model.name} on {config.dataset.name}',
                       {'more_data': [image]})


def _subset_config(config, fraction: float, seed: int):
  return config_check.variant(config, {
      'dataset.train_fraction': fraction * config.dataset.train_fraction,
      'dataset.subset_seed': seed}, seed)


def _plot(path: str, examples, errors, found) -> str:
  n, err = np.asarray(examples, float), np.asarray(errors, float)
  sizes = np.unique(n)
  series = {'validation error (mean of seeds)': (sizes, [err[n == s].mean() for s in sizes])}
  points = {'each seed': (n, err)}
  if found:
    grid = np.geomspace(sizes.min(), 4 * sizes.max(), 60)
    series[f"fit {found['a']:.3g} n^-{found['b']:.2f} + {found['c']:.3f}"] = (
        grid, learning_curve.power_law(grid, found['a'], found['b'], found['c']))
  plots.learning_curve(path, series, points, largest=sizes.max())
  return path
