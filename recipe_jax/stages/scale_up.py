"""stage='scale_up': do compare's (or tune's) conclusions hold at a larger scale? (recipe step 5)

`--config.scale_up.from_dir=DIR`, the --workdir of a finished compare stage (or of a tune stage
with `scale_up.source=tune`; a recipe's workdir holds both). Every run behind it (compare: each
variant's seeds; tune: its `scale_up.top_k` best finished trials) trains again with
`scale_up.changes` applied (JSON {"num_train_steps": "x10", "model.width": "x4"}), in
scale_up/<group>/seed_<n>/ (a restart resumes, finished runs are reused). The `trends_hold`
verdict: Spearman's rank correlation of the groups at both scales, and every conclusion (a
difference beyond noise at the small scale) that holds, fades or flips
(`recipe_jax.diagnose.trends`). Output: scale_up/results.{md,csv}, scale_up/trends.png.
"""
import os

import numpy as np

from recipe_jax import files
from recipe_jax.config import check as config_check, selection
from recipe_jax.diagnose import noise, trends
from recipe_jax.errors import DivergenceError, UserError
from recipe_jax.report import plots, results as report, tables
from recipe_jax import words
from recipe_jax.verdicts import StageResult, read_result
from recipe_jax.runs import driver, finished as runs

FILES = ['scale_up/results.md', 'scale_up/results.csv', 'scale_up/trends.png',
         'scale_up/report.md']


def source_runs(config) -> tuple:
  """({group: [run directory, ...]}, the source's metric) of the finished compare or tune stage
  in scale_up.from_dir; a one-line UserError for anything else."""
  from_dir, source = config.scale_up.from_dir, config.scale_up.source
  key = f'scale_up.from_dir={from_dir}'
  result_path = files.join(from_dir, source, 'result.json')
  if not files.exists(result_path):
    raise UserError(f'{key} holds no {source} stage ({result_path} is missing); give the '
                    f'--workdir of a finished {source} stage' + (
                        ' (or scale_up.source=tune for a tune stage)' if source == 'compare'
                        else ''))
  if not read_result(result_path).finished:
    raise UserError(f'{key}: its {source} stage has not finished; let it finish (the same '
                    'command resumes it), then scale it up')
  stage_config = runs.load_config(files.join(from_dir, source))
  if source == 'tune':
    metric = stage_config.tune.metric
    best = runs.best_trials(from_dir, config.scale_up.top_k, metric, key)
    return {os.path.basename(d): [d] for d in best}, metric
  names = ['baseline', *config_check.decoded(stage_config, 'compare.variants')]
  seeds = range(stage_config.seed, stage_config.seed + stage_config.compare.seeds)
  return ({name: [os.path.join(from_dir, 'compare', name, f'seed_{s}') for s in seeds]
           for name in names}, stage_config.compare.metric)


def scaled(config, run_config):
  """A source run's own config with scale_up.changes applied."""
  changes = config_check.decoded(config, 'scale_up.changes')
  found = config_check.variant(run_config, {
      key: config_check.changed(key, config_check.run_value(run_config, key), change)
      for key, change in changes.items()})
  if config.dataset.data_dir:
    found.dataset.data_dir = config.dataset.data_dir
  return found


def run(config, workdir: str) -> StageResult:
  groups, metric = source_runs(config)
  small = {}
  for name, run_dirs in groups.items():
    small[name] = [runs.finished_summary(d) for d in run_dirs]
    if None in small[name]:
      raise UserError(f'scale_up.from_dir={config.scale_up.from_dir}: '
                      f'{run_dirs[small[name].index(None)]} has not finished')
  out = os.path.join(workdir, 'scale_up')
  configs = {}  # every run's config checked before the first one trains
  for name, run_dirs in groups.items():
    try:
      configs[name] = [scaled(config, runs.load_config(d)) for d in run_dirs]
    except UserError as e:
      raise UserError(f'scale_up.changes on {name}: {e}') from None
  diverged = {}  # an answer too: a group that does not survive the scale
  large = driver.train_groups('scale_up', {name: [(group, [
      os.path.join(out, name, f'seed_{c.seed}') for c in group])] for name, group in configs.items()},
                              diverged)
  if large is None:  # preempted: the same command resumes here
    return StageResult('scale_up', [], {}, FILES, finished=False)
  if not large:
    raise DivergenceError(f'every run diverged at the larger scale ({diverged})')
  return finish(config, workdir, {n: small[n] for n in large}, large, metric, diverged)


def finish(config, workdir: str, small: dict, large: dict, metric: str,
           diverged: dict | None = None) -> StageResult:
  out = os.path.join(workdir, 'scale_up')
  scale = ', '.join(config_check.change_name(k, c) for k, c in
                    config_check.decoded(config, 'scale_up.changes').items())
  names = list(small)
  mean = lambda runs_: float(np.mean([s[metric] for s in runs_]))
  small_means, large_means = [mean(small[n]) for n in names], [mean(large[n]) for n in names]
  found = trends.conclusions(small, large, lambda a, b: noise.difference(a, b, metric))
  verdict = trends.verdict(names, small_means, large_means, found, metric, scale,
                           config.scale_up.min_rank_correlation, diverged)
  rows = [{'group': n, 'seeds': len(small[n]), f'small_{metric}': s, f'large_{metric}': g,
           'small_rank': _rank(small_means, metric).index(i) + 1,
           'large_rank': _rank(large_means, metric).index(i) + 1}
          for i, (n, s, g) in enumerate(zip(names, small_means, large_means))]
  _write(out, rows, found, metric, scale)
  flipped = {c[k] for c in found if c['fate'] == trends.FLIPS for k in ('a', 'b')}
  image = os.path.join(out, 'trends.png')
  plots.slopes(image, {n: ([s[metric] for s in small[n]], [s[metric] for s in large[n]])
                       for n in names}, words.metric_name(metric),
               ('small scale', f'larger: {scale}'), flipped)
  metrics = {'spearman': verdict.evidence['spearman'], 'conclusions': len(found),
             'flips': verdict.evidence['flips'], 'fades': verdict.evidence['fades'],
             'best_at_larger_scale': names[_rank(large_means, metric)[0]]}
  return report.finish(workdir, StageResult('scale_up', [verdict], metrics, FILES),
                       f'Scale up: {config.scale_up.from_dir} ({scale})',
                       {'trends_hold': [image]})


def _rank(means: list, metric: str) -> list:
  """Indices of `means`, best first."""
  return [i for _, i in selection.ranked([(m, i) for i, m in enumerate(means)], metric,
                                         lambda t: t[0])]


def _write(out: str, rows: list, found: list, metric: str, scale: str) -> None:
  tables.write_csv(os.path.join(out, 'results.csv'), rows)
  lines = [f'# Scale up: {metric} at the small scale and at the larger ({scale})', '',
           *tables.markdown(['group', 'seeds', 'small', 'rank', 'larger', 'rank'], [
               [r['group'], r['seeds'], f"{r[f'small_{metric}']:.4f}", r['small_rank'],
                f"{r[f'large_{metric}']:.4f}", r['large_rank']] for r in rows])]
  lines += ['', '## Conclusions (differences beyond noise at the small scale)', '']
  lines += [f"- {c['fate']}: {c['b']} - {c['a']} = {c['small']['delta']:+.4f} -> "
            f"{c['large']['delta']:+.4f} (noise +-{c['large']['noise_level']:.4f})"
            for c in found] or ['- none']
  lines += ['', '![trends](trends.png)', '']
  files.write_text(os.path.join(out, 'results.md'), '\n'.join(lines))
