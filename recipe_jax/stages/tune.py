"""stage='tune': recipe step 5, a hyperparameter search on Optuna that survives preemption.

Every trial is a normal train run in DIR/tune/trial_<n>/ (config.json, summary.json,
checkpoints). A worker is this same command started again, here or on another machine that
reaches `tune.storage`: the study, not the worker, decides what runs next. A worker killed
mid-trial leaves it RUNNING; once its heartbeat is stale, the next worker to start a trial
fails it and runs it again with the same parameters in the same directory, so it resumes from
the last checkpoint. SIGTERM saves the checkpoint, queues the trial again and exits 0. A
diverged trial is recorded as failed with its reason. The study ends with exactly
`tune.trials` finished trials (complete, pruned or diverged).
"""
import os
import re
import time

import jax
import numpy as np
import optuna
from absl import logging

from recipe_jax import console, files
from recipe_jax.config import check as config_check, selection
from recipe_jax import multihost
from recipe_jax.report import plots, results as report, tables
from recipe_jax.runs import driver, studies
from recipe_jax.errors import DivergenceError
from recipe_jax import words
from recipe_jax.verdicts import StageResult, Verdict

EDGE = 0.1  # a best value in the outer 10% of a numeric range suggests widening it


def suggest(trial, key: str, spec: dict):
  if spec['type'] == 'categorical':
    return trial.suggest_categorical(key, spec['choices'])
  if spec['type'] == 'int':
    return trial.suggest_int(key, spec['low'], spec['high'], log=spec.get('log', False))
  return trial.suggest_float(key, spec['low'], spec['high'], log=spec.get('log', False))


def make_sampler(name: str, seed: int):
  if name == 'qmc':  # the tuning playbook's quasi-random search for exploration
    return optuna.samplers.QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False)
  if name == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  if name == 'tpe':
    return optuna.samplers.TPESampler(seed=seed)
  return optuna.samplers.GPSampler(seed=seed)


def make_pruner(cfg):
  """`tune.pruner`; the median pruner compares with the trials finished so far once
  `tune.pruner_startup_trials` have."""
  if cfg.pruner == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials)
  if cfg.pruner == 'hyperband':
    return optuna.pruners.HyperbandPruner()
  return optuna.pruners.NopPruner()


def storage_url(config, out: str) -> str:
  return config.tune.storage or f'sqlite:///{os.path.abspath(os.path.join(out, "study.db"))}'


def open_study(config, out: str) -> optuna.Study:
  name = config.tune.study_name or studies.name_from(out)
  return studies.open_study(storage_url(config, out), name, config.tune.heartbeat_s,
                            make_sampler(config.tune.sampler, config.seed),
                            make_pruner(config.tune),
                            direction=selection.DIRECTIONS[config.tune.metric])


def counts_as_finished(t) -> bool:
  """Complete, pruned by the pruner, or failed for a reason of its own (diverged); not a
  preempted, stale or surplus trial (`studies`)."""
  state = optuna.trial.TrialState
  return (t.state == state.COMPLETE
          or (t.state == state.PRUNED and not studies.ended_on_purpose(t))
          or (t.state == state.FAIL and 'fail_reason' in t.user_attrs))


def finished_trials(study) -> list:
  return [t for t in study.get_trials(deepcopy=False) if counts_as_finished(t)]


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'tune')
  files.makedirs(out)
  space = config_check.decoded(config, 'tune.space')
  if not multihost.is_leader():  # a multi-host slice: only process 0 talks to the storage
    return _follow(config)
  study, preempted = open_study(config, out), []
  objective = make_objective(config, space, out, study, preempted)
  url = storage_url(config, out)
  try:
    studies.with_storage_retries(url, lambda: _work_until_done(config, study, objective,
                                                               preempted))
  finally:
    _tell_followers({'stop': True})
  if preempted:
    studies.queue_again(study, preempted[0])
    return StageResult('tune', [], {}, [], finished=False)
  return studies.with_storage_retries(url, lambda: finish(config, workdir, study, space))


def _work_until_done(config, study, objective, preempted: list) -> None:
  """Runs trials until the study has `tune.trials` finished ones. While the trials still
  missing run on other workers, this one waits; a trial whose worker stopped (its heartbeat
  stale after 2 x tune.heartbeat_s) is queued again, and this worker runs it."""
  target, waited = config.tune.trials, False
  while len(finished_trials(study)) < target and not preempted:
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial: queued again (WAITING)
    running = _trials(study, optuna.trial.TrialState.RUNNING)
    if (not _trials(study, optuna.trial.TrialState.WAITING)
        and len(finished_trials(study)) + len(running) >= target):
      if not waited:
        logging.info('tune: waiting for %d trial(s) running on other workers (a stopped '
                     "worker's trial runs here once its heartbeat is stale)", len(running))
        waited = True
      time.sleep(min(config.tune.heartbeat_s, 5))
      continue
    study.optimize(objective, callbacks=[_stop_when_done(target)], gc_after_trial=False)


def _trials(study, state) -> list:
  return study.get_trials(deepcopy=False, states=(state,))


def _tell_followers(message) -> None:
  """Process 0's decision (a trial to train, a pruning verdict, stop) to processes 1..N-1."""
  if jax.process_count() > 1:
    multihost.broadcast_json(message)


def _follow(config) -> StageResult:
  """Processes 1..N-1 of a multi-host slice: train each trial process 0 announces, prune when
  it says so, until it says stop. Process 0 records the trials and writes the results."""
  while True:
    message = multihost.broadcast_json()
    if message.get('stop'):
      return StageResult('tune', [], {}, [])

    def report_eval(step, metrics):
      if multihost.broadcast_json():
        raise optuna.TrialPruned(f'pruned at step {step}')

    try:
      driver.run_training(config_check.variant(config, message['overrides']),
                         message['run_dir'], report_eval)
    except (optuna.TrialPruned, DivergenceError):
      pass  # process 0 records it


def _stop_when_done(target: int):
  progress = console.StageProgress('tune', target, 'trials finished (all workers)')

  def callback(study, trial):
    finished = len(finished_trials(study))
    progress.done(min(finished, target))
    if finished >= target:
      study.stop()
  return callback


def make_objective(config, space: dict, out: str, study, preempted: list):
  """The trial's run; a trial stopped by a preemption goes into `preempted` (to be queued
  again) and ends PRUNED, as does a surplus one (`studies.end_trial`)."""
  target = config.tune.trials

  def objective(trial):
    earlier_running = [t for t in _trials(study, optuna.trial.TrialState.RUNNING)
                       if t.number < trial.number]
    if len(finished_trials(study)) + len(earlier_running) >= target:
      studies.end_trial(study, trial, 'surplus', f'the study already has its {target} trials')
    overrides = {key: suggest(trial, key, spec) for key, spec in space.items()}
    run_dir = trial.user_attrs.get('run_dir') or os.path.join(out, f'trial_{trial.number}')
    trial.set_user_attr('run_dir', run_dir)
    logging.info('tune: trial %d %s in %s', trial.number, words.settings(overrides), run_dir)
    _tell_followers({'overrides': overrides, 'run_dir': run_dir})

    def report_eval(step, metrics):
      trial.report(metrics[config.tune.metric], step)
      prune = trial.should_prune()
      _tell_followers(prune)
      if prune:
        raise optuna.TrialPruned(f'pruned at step {step}')

    try:
      summary = driver.run_training(config_check.variant(config, overrides), run_dir,
                                   report_eval)
    except DivergenceError as e:
      trial.set_user_attr('fail_reason', str(e))
      logging.warning('tune: trial %d diverged: %s', trial.number, e)
      return float('nan')  # recorded as FAIL; the study goes on
    if not summary['finished']:
      preempted.append(trial.number)
      studies.end_trial(study, trial, 'preempted', 'queued again to resume from its checkpoint')
    for key in ('resumed_from_step', 'test_accuracy', 'params_sha256', 'wall_s'):
      trial.set_user_attr(key, summary[key])
    return summary[config.tune.metric]

  return objective


def finish(config, workdir: str, study, space: dict) -> StageResult:
  """trials.csv, results.md, best_config.py, pictures and verdicts for a finished study."""
  out = os.path.join(workdir, 'tune')
  trials = finished_trials(study)
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  rows = _write_tables(out, trials, space, config.tune.metric)
  verdicts = [_finished_verdict(trials, complete, config.tune.trials)]
  files = ['tune/results.md', 'tune/trials.csv', 'tune/report.md']
  metrics = {'trials': len(trials), 'complete': len(complete)}
  images = {}
  if complete:
    best = selection.best(complete, config.tune.metric, lambda t: t.value)
    metrics.update({'best_trial': best.number, f'best_{config.tune.metric}': best.value,
                    'best_test_accuracy': best.user_attrs.get('test_accuracy'),
                    'best_params': best.params})
    _write_best_config(out, config_check.variant(config, best.params), best)
    files.insert(0, 'tune/best_config.py')
    verdicts += [*_boundary_verdicts(best, space), _spread_verdict(complete, config.tune.metric),
                 _importance_verdict(study, complete, config.seed)]
    images = _plots(out, complete, space, config.tune.metric)
  logging.info('tune: %d trials, %d complete', len(rows), len(complete))
  return report.finish(workdir, StageResult('tune', verdicts, metrics, files),
                       f'Tune: {config.model.name} on {config.dataset.name}', images)


def _finished_verdict(trials, complete, target) -> Verdict:
  """FAIL when no trial completed; WARN when the study is short of `tune.trials` (trials still
  RUNNING on workers that stopped) or fewer than half completed."""
  failed = {t.number: t.user_attrs['fail_reason'] for t in trials if 'fail_reason' in t.user_attrs}
  evidence = {'finished': len(trials), 'complete': len(complete), 'failed': failed,
              'pruned': len(trials) - len(complete) - len(failed), 'asked': target}
  line = (f'{len(trials)} of {target} trials finished: {len(complete)} complete, {len(failed)} '
          f'diverged, {evidence["pruned"]} pruned')
  if not complete:
    return Verdict('trials_finished', 'FAIL', f'{line}: every trial diverged; lower the learning '
                   'rate range or add optimizer.grad_clip_norm', evidence)
  if len(trials) < target:
    return Verdict('trials_finished', 'WARN', f'{line}: the study is short of its {target} trials '
                   '(the others were still running, or their worker stopped). Restart a worker '
                   'with the same command to finish it; a stopped trial resumes from its '
                   'checkpoint', evidence)
  if len(complete) < len(trials) / 2:
    return Verdict('trials_finished', 'WARN', f'{line}: fewer than half completed; narrow the '
                   'space towards where trials succeed', evidence)
  return Verdict('trials_finished', 'PASS', line, evidence)


def _boundary_verdicts(best, space: dict) -> list:
  """WARN for each numeric parameter whose best value sits in the outer 10% of its range."""
  verdicts = []
  for key, spec in space.items():
    if spec['type'] == 'categorical':
      continue
    value, low, high = best.params[key], spec['low'], spec['high']
    to_unit = (lambda v: np.log(v)) if spec.get('log') else (lambda v: v)
    position = (to_unit(value) - to_unit(low)) / (to_unit(high) - to_unit(low))
    evidence = {'best': value, 'low': low, 'high': high, 'position_in_range': float(position)}
    if position < EDGE or position > 1 - EDGE:
      side = 'low' if position < EDGE else 'high'
      verdicts.append(Verdict(f'boundary_{key}', 'WARN', f'the best {key}={value:.4g} sits at the '
                              f'{side} end of [{low:g}, {high:g}]: widen the range past it',
                              evidence))
    else:
      verdicts.append(Verdict(f'boundary_{key}', 'PASS', f'the best {key}={value:.4g} lies inside '
                              f'[{low:g}, {high:g}]', evidence))
  return verdicts


def _spread_verdict(complete, metric: str) -> Verdict:
  values = np.array(selection.ranked([t.value for t in complete], metric))
  return Verdict('metric_spread', 'PASS', f'{metric} over {len(values)} trials: best '
                 f'{values[0]:.4f}, median {np.median(values):.4f}, worst {values[-1]:.4f}',
                 {'values': values.round(5).tolist()})


def _importance_verdict(study, complete, seed: int) -> Verdict:
  """fANOVA importances (Optuna's FanovaImportanceEvaluator, named: Optuna's default evaluator
  is PED-ANOVA, which needs more trials). WARN when they cannot be computed."""
  if len(complete) < 3:
    return Verdict('parameter_importance', 'PASS', 'too few complete trials (fewer than 3) to '
                   'rank parameters', {})
  varied = [key for key in complete[0].params if len({t.params[key] for t in complete}) > 1]
  if not varied:
    return Verdict('parameter_importance', 'WARN', 'no parameter took more than one value in '
                   'the complete trials; nothing to rank', {})
  try:
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=varied)
  except Exception as e:  # noqa: BLE001  any failure is reported, never a silent PASS
    logging.info('importances failed', exc_info=True, extra=console.FILE_ONLY)
    return Verdict('parameter_importance', 'WARN', f'fANOVA importances could not be computed: '
                   f'{type(e).__name__}: {e}', {'error': str(e)})
  ranked = ', '.join(f'{k} {v:.2f}' for k, v in importances.items())
  return Verdict('parameter_importance', 'PASS', f'importance (fANOVA): {ranked}',
                 {'importances': dict(importances), 'evaluator': 'fANOVA'})


def _write_tables(out: str, trials, space: dict, metric: str) -> list:
  rows = []
  worst = -np.inf * selection.sign(metric)  # unfinished values sort last
  value = lambda t: t.value if t.value is not None and np.isfinite(t.value) else worst
  for t in selection.ranked(trials, metric, value):
    rows.append({'number': t.number, 'state': t.state.name,
                 **{k: t.params.get(k) for k in space}, metric: t.value,
                 'wall_s': t.user_attrs.get('wall_s'),
                 'resumed_from_step': t.user_attrs.get('resumed_from_step'),
                 'note': t.user_attrs.get('fail_reason', '')[:80]})
  tables.write_csv(os.path.join(out, 'trials.csv'), rows)
  cell = lambda v: f'{v:.4g}' if isinstance(v, float) else '-' if v is None or v == '' else v
  lines = ([f'# Tune: trials ranked by {metric}', '',
            *tables.markdown(list(rows[0]), [[cell(v) for v in r.values()] for r in rows])]
           if rows else ['# Tune: no trial finished'])
  files.write_text(os.path.join(out, 'results.md'), '\n'.join(lines) + '\n')
  return rows


def _write_best_config(out: str, trial_config, best) -> None:
  """A config file that reproduces the best trial: the config it trained with, key by key
  (built here, so it works on any worker, whichever machine ran the trial)."""
  resolved = trial_config.to_dict()
  lines = [f'"""Best trial {best.number} of the tune stage in {out} ({best.value:.4f}).',
           '', f'python -m recipe_jax.main --config={os.path.join(out, "best_config.py")} '
           '--workdir=DIR reproduces it bit for bit."""',
           'from recipe_jax.config import defaults', '', '', 'def get_config():',
           '  c = defaults.get_config()']
  for key, value in _flatten(resolved):
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f'  c.{key} = {value!r}')
  lines.append('  return c')
  files.write_text(os.path.join(out, 'best_config.py'), '\n'.join(lines) + '\n')


def _flatten(tree: dict, prefix: str = ''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f'{prefix}{key}.')
    elif value is not None:
      yield f'{prefix}{key}', value


def _plots(out: str, complete, space: dict, metric: str) -> dict:
  """The optimisation history (under metric_spread) and the metric against each parameter
  (under its boundary verdict; categorical ones under parameter_importance)."""
  ordered = sorted(complete, key=lambda t: t.number)
  history = os.path.join(out, 'history.png')
  values = np.array([t.value for t in ordered])
  plots.curves(history, {metric: ([t.number for t in ordered], values),
                         'best so far': ([t.number for t in ordered],
                                         selection.best_so_far(values, metric))}, 'trial',
               words.metric_name(metric), integer_x=True)
  images = {'metric_spread': [history]}
  for key, spec in space.items():
    path = os.path.join(out, 'param_' + re.sub(r'[^\w]+', '_', key) + '.png')
    xs = [t.params[key] for t in ordered]
    bounds = {} if spec['type'] == 'categorical' else {'low': spec['low'], 'high': spec['high']}
    plots.scatter(path, xs, values, key, words.metric_name(metric), logx=bool(spec.get('log')),
                  vlines=bounds)
    check = 'parameter_importance' if spec['type'] == 'categorical' else f'boundary_{key}'
    images.setdefault(check, []).append(path)
  return images
