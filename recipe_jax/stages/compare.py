"""stage='compare': complexify one change at a time (recipe steps 3-4).

The config is the baseline; `compare.variants` (JSON) names variants of a few overrides each,
e.g. '{"dropout": {"model.dropout": 0.1}, "wd": {"optimizer.name": "adamw",
"optimizer.weight_decay": 5e-4}}'. Every variant, baseline included, trains for
`compare.seeds` seeds in compare/<variant>/seed_<n>/ (a normal train run: a restart resumes
it, and a finished one is not redone). Output: compare/results.{md,csv} with the validation
metric's mean +- std, the delta against the baseline and whether it is inside noise, the
train/validation gap, and compare/curves.png (validation curves overlaid, seed means).
"""
import json
import os
import time

import numpy as np
import optuna
from absl import logging

from recipe_jax import files
from recipe_jax.config import check as config_check, selection
from recipe_jax.diagnose import noise
from recipe_jax.report import plots, results as report, tables
from recipe_jax.runs import driver, store as run_store, finished as runs, studies
from recipe_jax import words
from recipe_jax.verdicts import StageResult, Verdict

def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'compare')
  files = ['compare/results.md', 'compare/curves.png', 'compare/report.md']
  variants = {noise.BASELINE: {}, **config_check.decoded(config, 'compare.variants')}
  seeds = range(config.seed, config.seed + config.compare.seeds)
  if config.compare.storage and not run_through_study(config, out, variants, seeds):
    return StageResult('compare', [], {}, files, finished=False)  # others still train
  summaries = driver.train_groups('compare', {name: [(
      [config_check.variant(config, overrides, s) for s in seeds],
      [os.path.join(out, name, f'seed_{s}') for s in seeds])] for name, overrides in variants.items()})
  if summaries is None:  # preempted: a restart resumes here
    return StageResult('compare', [], {}, files, finished=False)
  rows = noise.group_rows(summaries, variants, config.compare.metric)
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
    summary = driver.run_training(config_check.variant(config, variants[variant], seed),
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



def _write(out: str, rows: list, metric: str) -> None:
  tables.write_csv(os.path.join(out, 'results.csv'), rows)
  cells = []
  for r in rows:
    overrides = ', '.join(f'{k}={v}' for k, v in json.loads(r['overrides']).items()) or '(none)'
    spread = f"+- {r['std']:.4f}" if r['seeds'] > 1 else '(1 seed)'
    delta = '' if r['variant'] == noise.BASELINE else f"{r['delta']:+.4f}"
    cells.append([r['variant'], overrides, r['seeds'], f"{r['mean']:.4f} {spread}", delta,
                  r['noise'] or '-', f"{r['train_val_gap']:.4f}", f"{r['test_accuracy']:.4f}"])
  lines = [f'# Compare: {metric}, mean +- std over seeds', '',
           *tables.markdown(['variant', 'overrides', 'seeds', metric, 'delta vs baseline',
                             'beyond the noise?', 'train - val gap', 'test accuracy'], cells),
           '', '![validation curves](curves.png)', '']
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
