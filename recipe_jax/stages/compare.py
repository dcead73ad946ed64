"""stage='compare': complexify one change at a time (recipe steps 3-4).

The config is the baseline; `compare.variants` (JSON) names variants of a few overrides each,
e.g. '{"dropout": {"model.dropout": 0.1}, "wd": {"optimizer.name": "adamw",
"optimizer.weight_decay": 5e-4}}'. Every variant, baseline included, trains for
`compare.seeds` seeds in compare/<variant>/seed_<n>/ (a normal train run: a restart resumes
it, and a finished one is not redone). Output: compare/results.{md,csv} with the validation
metric's mean +- std, the delta against the baseline and whether it is inside noise, the
train/validation gap, and compare/curves.png (validation curves overlaid, seed means).
"""
import csv
import json
import os
import time

import numpy as np
import optuna
from absl import logging

from recipe_jax import console, files
from recipe_jax.config import check as config_check, selection
from recipe_jax.report import plots, results as report
from recipe_jax.runs import store as run_store, finished as runs, studies
from recipe_jax.report import words
from recipe_jax.report.results import StageResult, Verdict
from recipe_jax.stages import train

BASELINE = 'baseline'


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'compare')
  files = ['compare/results.md', 'compare/curves.png', 'compare/report.md']
  variants = {BASELINE: {}, **config_check.decoded(config, 'compare.variants')}
  seeds = range(config.seed, config.seed + config.compare.seeds)
  if config.compare.storage and not run_through_study(config, out, variants, seeds):
    return StageResult('compare', [], {}, files, finished=False)  # others still train
  summaries = {}
  progress = console.StageProgress('compare', len(variants) * len(seeds))
  for name, overrides in variants.items():
    found = train.train_runs(
        'compare', [config_check.variant(config, overrides, s) for s in seeds],
        [os.path.join(out, name, f'seed_{s}') for s in seeds], progress,
        sum(map(len, summaries.values())))
    if found is None:  # preempted: a restart resumes here
      return StageResult('compare', [], {}, files, finished=False)
    summaries[name] = found
  rows = table(summaries, variants, config.compare.metric)
  _write(out, rows, config.compare.metric)
  _curves(os.path.join(out, 'curves.png'), summaries, config.compare.metric)
  for row in rows:
    logging.info('compare %-12s %s %.4f +- %.4f  delta %+.4f %s  gap %.4f', row['variant'],
                 config.compare.metric, row['mean'], row['std'], row['delta'], row['noise'],
                 row['train_val_gap'])
  best = selection.best(rows, config.compare.metric, lambda r: r['mean'])
  metrics = {'best_variant': best['variant'], f'best_{config.compare.metric}': best['mean'],
             f'baseline_{config.compare.metric}': rows[0]['mean']}
  return report.finish(workdir, StageResult('compare', verdicts(rows, config.compare.metric),
                                            metrics, files), 'Compare: one change at a time')


def verdicts(rows: list, metric: str) -> list:
  """One per variant: PASS when it beats the baseline beyond noise (higher accuracy, or
  lower loss), WARN otherwise (a change that cannot be told apart from the baseline, or one
  that makes it worse)."""
  found = []
  for row in rows[1:]:
    noise = (f"+-{row['noise_level']:.4f}" if np.isfinite(row['noise_level']) else
             'one seed gives no noise estimate: use compare.seeds >= 2')
    line = (f"{metric} {row['mean']:.4f} +- {row['std']:.4f} over {row['seeds']} seed(s), "
            f"{row['delta']:+.4f} vs baseline: {row['noise']} ({noise})")
    better = row['noise'] == 'beyond noise' and selection.sign(metric) * row['delta'] > 0
    found.append(Verdict(f"variant_{row['variant']}", 'PASS' if better else 'WARN', line,
                         {k: row[k] for k in ('overrides', 'seeds', 'mean', 'std', 'delta',
                                              'noise', 'noise_level', 'seed_noise_level',
                                              'split_noise_level', 'train_val_gap',
                                              'test_accuracy')}))
  return found


def run_through_study(config, out: str, variants: dict, seeds) -> bool:
  """Trains the runs as the trials of a study in `compare.storage`, which workers on several
  machines share (a killed worker's run is retried from its checkpoint, as in the tune stage).
  True once every run has finished, so this worker writes the table."""
  unfinished = [(name, seed) for name in variants for seed in seeds if run_store.reusable_summary(
      os.path.join(out, name, f'seed_{seed}'), config_check.variant(config, variants[name], seed))
                is None]
  name = config.compare.study_name or studies.name_from(out)
  study = studies.open_study(config.compare.storage, name, config.compare.heartbeat_s,
                             direction=selection.DIRECTIONS[config.compare.metric])
  if 'runs' not in study.user_attrs:
    _enqueue_once(study, config.compare.storage, name, unfinished, out)
  optuna.storages.fail_stale_trials(study)  # a dead worker's run, queued again

  preempted = []

  def objective(trial):
    if 'run_dir' not in trial.user_attrs:  # not one of the enqueued runs: nothing left to do
      studies.end_trial(study, trial, 'surplus', 'every run of the comparison is taken')
    variant, seed = trial.user_attrs['variant'], trial.user_attrs['seed']
    trial.suggest_categorical('variant', list(variants))
    trial.suggest_int('seed', min(seeds), max(seeds))
    logging.info('compare: training %s, seed %d (trial %d)', variant, seed, trial.number)
    summary = train.run_training(config_check.variant(config, variants[variant], seed),
                                 trial.user_attrs['run_dir'])
    if not summary['finished']:
      preempted.append(trial.number)
      studies.end_trial(study, trial, 'preempted', 'queued again to resume from its checkpoint')
    return summary[config.compare.metric]

  if _waiting(study):
    studies.with_storage_retries(config.compare.storage, lambda: study.optimize(
        objective, callbacks=[_stop_when_queue_empty], gc_after_trial=False))
  if preempted:
    studies.queue_again(study, preempted[0])
    return False
  left = [(n, s) for n in variants for s in seeds
          if runs.finished_summary(os.path.join(out, n, f'seed_{s}')) is None]
  if left:
    logging.info('compare: %d runs still train on other workers; the last one writes the '
                 'table (or run this command again when they are done)', len(left))
  return not left


def _enqueue_once(study, url: str, name: str, queued: list, out: str) -> None:
  """The first worker queues every run; the others wait until it has. Creating a marker study
  is the claim: the database lets exactly one worker create it."""
  try:
    optuna.create_study(study_name=f'{name}.queued', storage=url, load_if_exists=False)
  except optuna.exceptions.DuplicatedStudyError:
    deadline = time.time() + 120
    while 'runs' not in study.user_attrs and time.time() < deadline:
      time.sleep(0.5)
    return
  for variant, seed in queued:
    study.enqueue_trial({'variant': variant, 'seed': seed}, user_attrs={
        'run_dir': os.path.join(out, variant, f'seed_{seed}'), 'variant': variant, 'seed': seed})
  study.set_user_attr('runs', len(queued))


def _waiting(study) -> list:
  return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))


def _stop_when_queue_empty(study, trial) -> None:
  if not _waiting(study):
    study.stop()



def difference(base: list, other: list, metric: str) -> dict:
  """`other`'s mean `metric` minus `base`'s (lists of run summaries), and whether that delta is
  beyond the noise: more than twice its standard error. That error is the seeds' spread,
  2 * sqrt(std_b^2 / n_b + std_v^2 / n_v), but never below what the validation split's size
  allows for an accuracy (the binomial error sqrt(p (1 - p) / n_val) of each mean): two seeds
  that happen to agree, or a handful of validation examples, measure no difference finer than
  that. Fewer than 2 seeds: no estimate, so every delta is inside."""
  def binomial_variance(summaries, mean):
    if not metric.endswith('accuracy'):
      return 0.0
    examples = min((s.get('val_examples') or 0) for s in summaries)
    return mean * (1 - mean) / examples if examples else 0.0

  b = np.array([s[metric] for s in base], np.float64)
  v = np.array([s[metric] for s in other], np.float64)
  delta = v.mean() - b.mean()
  noise = seed_noise = split_noise = float('inf')
  if min(len(b), len(v)) > 1:
    seeds = b.var(ddof=1) / len(b) + v.var(ddof=1) / len(v)
    split = binomial_variance(base, b.mean()) + binomial_variance(other, v.mean())
    seed_noise, split_noise = 2 * np.sqrt(seeds), 2 * np.sqrt(split)
    noise = max(seed_noise, split_noise)
  return {'delta': delta, 'noise': 'inside noise' if abs(delta) <= noise else 'beyond noise',
          'noise_level': noise,
          # the seeds' part falls with more seeds, the validation split's does not
          'seed_noise_level': seed_noise, 'split_noise_level': split_noise}


def table(summaries: dict, variants: dict, metric: str) -> list:
  """One row per variant: metric mean/std over seeds, delta vs baseline and whether it is
  beyond the noise (`difference`), the train - validation gap."""
  def values(name, key):
    return np.array([s[key] for s in summaries[name]], np.float64)

  rows = []
  for name in summaries:
    v = values(name, metric)
    gap = values(name, 'train_accuracy') - values(name, 'eval_accuracy')
    against = difference(summaries[BASELINE], summaries[name], metric)
    if name == BASELINE:
      against['noise'] = ''
    rows.append({'variant': name, 'overrides': json.dumps(variants[name]), 'seeds': len(v),
                 'mean': v.mean(), 'std': v.std(ddof=1) if len(v) > 1 else 0.0, **against,
                 'train_val_gap': gap.mean(),
                 'test_accuracy': values(name, 'test_accuracy').mean()})
  return rows


def write_csv(path: str, rows: list) -> None:
  with files.writing_text(path) as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)


def _write(out: str, rows: list, metric: str) -> None:
  write_csv(os.path.join(out, 'results.csv'), rows)
  lines = [f'# Compare: {metric}, mean +- std over seeds', '',
           f'| variant | overrides | seeds | {metric} | delta vs baseline | beyond the noise? |'
           ' train - val gap | test accuracy |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    overrides = ', '.join(f'{k}={v}' for k, v in json.loads(r['overrides']).items()) or '(none)'
    spread = f"+- {r['std']:.4f}" if r['seeds'] > 1 else '(1 seed)'
    delta = '' if r['variant'] == BASELINE else f"{r['delta']:+.4f}"
    lines.append(f"| {r['variant']} | {overrides} | {r['seeds']} | {r['mean']:.4f} {spread} | "
                 f"{delta} | {r['noise'] or '-'} | {r['train_val_gap']:.4f} | "
                 f"{r['test_accuracy']:.4f} |")
  lines += ['', '![validation curves](curves.png)', '']
  files.write_text(os.path.join(out, 'results.md'), '\n'.join(lines))


def _curves(path: str, summaries: dict, metric: str) -> None:
  series = {}
  for name, seed_summaries in summaries.items():
    histories = [r['history'] for r in seed_summaries if r.get('history')]
    length = min(len(h) for h in histories) if histories else 0
    if length:
      steps = [e['step'] for e in histories[0][:length]]
      mean = np.mean([[e[metric] for e in h[:length]] for h in histories], axis=0)
      series[name] = (steps, mean)
  plots.curves(path, series, 'step', f'{words.metric_name(metric)} (mean over seeds)')
