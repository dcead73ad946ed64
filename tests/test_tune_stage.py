"""The tune stage: a study of short mnist1d runs, its outputs, and its workers' faults."""
import importlib.util
import json
import os
import signal

import optuna
import pytest

from conftest import (cli_flags, read_summary, run_main, start_main, wait_for_checkpoint,
                      wait_until_a_trial_is_stale)
from recipe_jax.errors import UserError
from recipe_jax.runs import driver
from recipe_jax.stages import tune

SPACE = {'optimizer.learning_rate': {'type': 'float', 'low': 1e-3, 'high': 3e-2, 'log': True},
         'model.width': {'type': 'int', 'low': 16, 'high': 64}}


def trials_of(workdir):
  storage = f'sqlite:///{os.path.abspath(os.path.join(workdir, "tune", "study.db"))}'
  [summary] = optuna.get_all_study_summaries(storage)
  return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


def load_config_file(path):
  spec = importlib.util.spec_from_file_location('best_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_study_writes_its_tables_and_a_best_config_that_reproduces_the_best_trial(
    tune_config, tmp_path, data_dir):
  result = tune.run(tune_config, str(tmp_path))
  assert result.metrics['trials'] == 3 and result.metrics['complete'] == 3
  assert {v.check for v in result.verdicts} >= {'trials_finished', 'metric_spread',
                                                 'boundary_model.width', 'parameter_importance'}
  out = tmp_path / 'tune'
  assert len((out / 'trials.csv').read_text().strip().splitlines()) == 1 + 3
  assert '| COMPLETE |' in (out / 'results.md').read_text()
  for picture in ('history', 'param_optimizer_learning_rate', 'param_model_width'):
    assert (out / f'{picture}.png').stat().st_size > 1000
  best = result.metrics['best_trial']
  best_config = load_config_file(out / 'best_config.py')
  best_config.dataset.data_dir = data_dir
  again = driver.run_training(best_config, str(tmp_path / 'again'))
  assert again['params_sha256'] == read_summary(out / f'trial_{best}')['params_sha256']

  tune.run(tune_config, str(tmp_path))  # restarting a finished study adds no trials
  assert len(trials_of(tmp_path)) == 3


def test_a_diverged_trial_is_recorded_and_a_study_of_only_those_fails(tune_config, tmp_path):
  tune_config.tune.space = json.dumps({'optimizer.learning_rate': {
      'type': 'categorical', 'choices': [1e5, 1e6]}})
  tune_config.tune.trials = 2
  tune_config.tune.sampler = 'random'
  result = tune.run(tune_config, str(tmp_path))
  [finished] = [v for v in result.verdicts if v.check == 'trials_finished']
  assert finished.status == 'FAIL' and 'every trial diverged' in finished.summary
  assert all('diverged at step' in reason for reason in finished.evidence['failed'].values())
  assert len(finished.evidence['failed']) == 2


def test_boundary_warns_when_the_best_value_sits_at_the_edge_of_its_range():
  def best_at(value):
    distribution = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    return optuna.trial.create_trial(params={'optimizer.learning_rate': value},
                                     distributions={'optimizer.learning_rate': distribution},
                                     value=0.9)
  space = {'optimizer.learning_rate': SPACE['optimizer.learning_rate'] | {'low': 1e-4,
                                                                          'high': 1e-1}}
  [edge] = tune._boundary_verdicts(best_at(0.08), space)  # log position 0.97
  assert edge.status == 'WARN' and 'high end' in edge.summary
  [inside] = tune._boundary_verdicts(best_at(3e-3), space)  # log position 0.49
  assert inside.status == 'PASS'


@pytest.mark.parametrize('space, message', [
    ({'no.such_key': {'type': 'float', 'low': 0, 'high': 1}}, 'no'),
    ({'optimizer.learning_rate': {'type': 'float', 'low': 1, 'high': 0.1}}, 'low'),
    ({'optimizer.learning_rate': {'type': 'normal'}}, 'type'),
    ({'optimizer.learning_rate': {'type': 'float', 'low': 0, 'high': 1, 'log': True}}, 'low > 0'),
])
def test_a_bad_space_is_refused_before_anything_runs(tune_config, tmp_path, space, message):
  tune_config.tune.space = json.dumps(space)
  with pytest.raises(UserError, match=message):
    tune.run(tune_config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'tune' / 'trial_0')



def test_two_workers_share_one_study_and_finish_exactly_its_trials(tune_config, tmp_path):
  tune_config.tune.trials = 4
  workers = [start_main(tmp_path, *cli_flags(tune_config)) for _ in range(2)]
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  trials = trials_of(tmp_path)
  finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(finished) == 4 and len({t.number for t in finished}) == 4
  assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
  started = [line for out in outputs for line in out.splitlines() if 'tune: trial' in line]
  assert len(started) >= 4 and all(any('tune: trial' in line for line in out.splitlines())
                                   for out in outputs), 'both workers ran trials'


@pytest.mark.parametrize('how', ['SIGKILL', 'SIGTERM', 'SIGINT'])
def test_a_stopped_trial_runs_again_from_its_checkpoint(tune_config, tmp_path, how):
  tune_config.tune.trials = 2
  tune_config.tune.heartbeat_s = 1
  tune_config.num_train_steps = 3000
  tune_config.checkpoint_every_steps = 100
  tune_config.eval_every_steps = 1000
  worker = start_main(tmp_path, *cli_flags(tune_config))
  wait_for_checkpoint(worker, tmp_path / 'tune' / 'trial_0' / 'checkpoints')
  worker.send_signal(getattr(signal, how))
  output, _ = worker.communicate(timeout=120)
  if how != 'SIGKILL':  # a preemption, or Ctrl-C: saved, queued again, one line
    assert worker.returncode == (0 if how == 'SIGTERM' else 130), output[-3000:]
    assert 'queued to run again' in output and 'Traceback' not in output
  else:
    wait_until_a_trial_is_stale(
        f'sqlite:///{os.path.abspath(tmp_path / "tune" / "study.db")}', 1)
  again = run_main(tmp_path, *cli_flags(tune_config), timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  trials = trials_of(tmp_path)
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(complete) == 2 and not [t for t in trials
                                     if t.state == optuna.trial.TrialState.RUNNING]
  [retried] = [t for t in complete if t.user_attrs['run_dir'].endswith('trial_0')]
  assert retried.number != 0 and retried.params == trials[0].params
  if how == 'SIGKILL':  # its worker died: Optuna's heartbeat check failed it
    assert trials[0].state == optuna.trial.TrialState.FAIL
  else:  # ended on purpose: not a failure, in optuna-dashboard either
    assert trials[0].state == optuna.trial.TrialState.PRUNED
    assert trials[0].user_attrs['ended'] == 'preempted' and 'ended' not in retried.user_attrs
  assert retried.user_attrs['resumed_from_step'] > 0  # from the checkpoint, not from scratch
  assert read_summary(tmp_path / 'tune' / 'trial_0')['resumed_from_step'] > 0


def test_two_workers_share_a_study_in_a_real_postgresql_server(tune_config, tmp_path):
  from helpers import postgres_server
  assert postgres_server.binary('initdb'), ("PostgreSQL's binaries are missing: apt-get install "
                                            'postgresql (.ci/run installs it)')
  tune_config.tune.trials = 4
  with postgres_server.running_server() as url:
    tune_config.tune.storage = url
    tune_config.tune.study_name = 'two_workers'
    workers = [start_main(tmp_path / f'worker_{i}', *cli_flags(tune_config)) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    trials = optuna.load_study(study_name='two_workers', storage=url).get_trials()
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(complete) == 4 and len({t.number for t in complete}) == 4
  assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_study_storage_that_stops_answering_mid_trial_is_waited_for(tune_config, tmp_path):
  """PostgreSQL goes down while trial 0 trains: the worker warns and tries again after a wait;
  the server is back by then, and the study finishes: trial 0 resumes from its checkpoint."""
  from helpers import postgres_server
  tune_config.tune.trials, tune_config.tune.heartbeat_s = 2, 1
  tune_config.num_train_steps, tune_config.checkpoint_every_steps = 1500, 100
  tune_config.eval_every_steps = 100  # each eval reports to the storage
  with postgres_server.running_server() as url:
    tune_config.tune.storage, tune_config.tune.study_name = url, 'outage'
    worker = start_main(tmp_path, *cli_flags(tune_config))
    wait_for_checkpoint(worker, tmp_path / 'tune' / 'trial_0' / 'checkpoints')
    postgres_server.stop(url)
    lines = []
    for line in worker.stdout:
      lines.append(line)
      if 'trying again in' in line:
        break
    assert 'attempt 2 of 3' in lines[-1], ''.join(lines)[-3000:]
    postgres_server.start(url)
    output = ''.join(lines) + worker.communicate(timeout=300)[0]
    assert worker.returncode == 0 and 'Traceback' not in output, output[-3000:]
    trials = optuna.load_study(study_name='outage', storage=url).get_trials()
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(complete) == 2
  assert read_summary(tmp_path / 'tune' / 'trial_0')['resumed_from_step'] > 0


@pytest.mark.parametrize('wrapped', [False, True])
def test_a_storage_that_stays_down_is_one_line_after_a_bounded_number_of_tries(monkeypatch,
                                                                               wrapped):
  import sqlalchemy.exc
  from recipe_jax.runs import studies
  monkeypatch.setattr(studies, 'STORAGE_WAIT_S', 0.01)
  calls = []

  def work():
    calls.append(1)
    down = sqlalchemy.exc.OperationalError('SELECT 1', {}, ConnectionRefusedError('refused'))
    if not wrapped:
      raise down
    try:  # optuna 5.1 raises an unrelated error while handling the storage's
      raise optuna.exceptions.StorageInternalError('commit failed') from down
    except optuna.exceptions.StorageInternalError:
      raise UnboundLocalError('updated_state')
  from recipe_jax.errors import StorageUnavailable
  with pytest.raises(StorageUnavailable, match=r'^study storage postgresql\+psycopg://h/db stopped '
                     r'answering \((OperationalError|StorageInternalError): .*3 tries\); the '
                     'runs keep their checkpoints: run the same command again once it answers$'):
    studies.with_storage_retries('postgresql+psycopg://h/db', work)
  assert len(calls) == studies.STORAGE_ATTEMPTS == 3 and StorageUnavailable.exit_code == 4
  with pytest.raises(ValueError):  # anything else is not retried
    studies.with_storage_retries('postgresql+psycopg://h/db', lambda: int('x'))


def test_the_median_pruner_hears_every_eval_and_pruned_trials_count_as_finished(tune_config,
                                                                                tmp_path):
  tune_config.tune.pruner = 'median'
  tune_config.tune.pruner_startup_trials = 1  # prunes from the second trial on
  tune_config.tune.sampler = 'random'
  tune_config.tune.trials = 4
  tune_config.tune.space = json.dumps({'optimizer.learning_rate': {
      'type': 'categorical', 'choices': [1e-2, 1e-7]}})  # 1e-7 learns nothing in 40 steps
  result = tune.run(tune_config, str(tmp_path))
  trials = trials_of(tmp_path)
  pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
  assert pruned and all(t.params['optimizer.learning_rate'] == 1e-7 for t in pruned)
  assert all(len(t.intermediate_values) >= 1 for t in trials)  # reported at step 20
  assert result.metrics['trials'] == 4 == len([t for t in trials if tune.counts_as_finished(t)])


def test_a_worker_that_loses_the_race_to_create_the_tables_joins_the_study(tune_config, tmp_path,
                                                                           monkeypatch):
  """Seen in CI-like load: two workers created the tables at once and one died with
  IntegrityError (alembic_version)."""
  import sqlalchemy.exc
  from recipe_jax.runs import studies
  real, calls = studies._ClaimOnceStorage, []

  class StorageThatLosesOnce(real):
    def __init__(self, *args, **kwargs):
      calls.append(1)
      if len(calls) == 1:
        raise sqlalchemy.exc.IntegrityError('INSERT INTO alembic_version', {},
                                            Exception('UNIQUE constraint failed'))
      super().__init__(*args, **kwargs)

  monkeypatch.setattr(studies, '_ClaimOnceStorage', StorageThatLosesOnce)
  study = tune.open_study(tune_config, str(tmp_path))
  assert len(calls) == 2 and study.get_trials() == []


def test_workers_that_claim_queued_trials_at_once_never_claim_the_same_one(tmp_path):
  """Seen in CI: two compare workers on one SQLite study both trained trial 1, and the second
  to finish died on 'Cannot tell a COMPLETE trial'. SQLite ignores Optuna's SELECT ... FOR
  UPDATE; before the claim was one conditional UPDATE, 4 threads took about a third of 60
  queued trials twice."""
  import collections
  import threading
  from recipe_jax.runs import studies
  url = f'sqlite:///{tmp_path / "queue.db"}'
  queue = studies.open_study(url, 'queue', heartbeat_s=60)
  for i in range(60):
    queue.enqueue_trial({'x': i}, user_attrs={'run': i})
  taken = collections.Counter()

  def worker():
    study = studies.open_study(url, 'queue', heartbeat_s=60)
    while 'run' in (trial := study.ask()).user_attrs:
      taken[trial.user_attrs['run']] += 1

  threads = [threading.Thread(target=worker) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(taken) == list(range(60)) and set(taken.values()) == {1}
  started = studies.open_study(url, 'queue', heartbeat_s=60).get_trials()[:60]
  assert all(t.state == optuna.trial.TrialState.RUNNING and t.datetime_start for t in started)


def test_the_study_finishes_a_trial_whose_worker_died_instead_of_ending_short(tune_config,
                                                                              tmp_path):
  """A dead worker's RUNNING trial used to count as still to come: the live worker found the
  study full, stopped, and the study ended one trial short with a PASS."""
  tune_config.tune.trials = 1
  tune_config.tune.heartbeat_s = 1
  tune.run(tune_config, str(tmp_path))  # one finished trial
  study = tune.open_study(tune_config, str(tmp_path / 'tune'))
  dead = study.ask({'optimizer.learning_rate': optuna.distributions.FloatDistribution(
      1e-3, 3e-2, log=True), 'model.width': optuna.distributions.IntDistribution(16, 64)})
  study._storage.record_heartbeat(dead._trial_id)  # a worker started it just now, then vanished
  tune_config.tune.trials = 2
  result = tune.run(tune_config, str(tmp_path))
  trials = trials_of(tmp_path)
  assert result.metrics['trials'] == 2
  assert len([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
  assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
  [finished] = [v for v in result.verdicts if v.check == 'trials_finished']
  assert finished.status == 'PASS' and finished.summary.startswith('2 of 2 trials finished')


def test_a_short_study_warns_and_says_how_to_finish_it():
  complete = [optuna.trial.create_trial(params={}, distributions={}, value=0.9)]
  verdict = tune._finished_verdict(complete, complete, target=3)
  assert verdict.status == 'WARN' and verdict.summary.startswith('1 of 3 trials finished')
  assert 'Restart a worker with the same command' in verdict.summary
  assert tune._finished_verdict(complete * 3, complete * 3, target=3).status == 'PASS'


def test_a_loss_metric_selects_the_lowest_and_the_importance_method_is_named(tune_config,
                                                                             tmp_path):
  tune_config.tune.metric = 'eval_loss'
  tune_config.tune.sampler = 'random'
  tune_config.tune.trials = 4
  result = tune.run(tune_config, str(tmp_path))
  complete = [t for t in trials_of(tmp_path) if t.state == optuna.trial.TrialState.COMPLETE]
  lowest = min(complete, key=lambda t: t.value)
  assert result.metrics['best_trial'] == lowest.number
  assert result.metrics['best_eval_loss'] == lowest.value
  rows = (tmp_path / 'tune' / 'trials.csv').read_text().splitlines()
  assert rows[1].split(',')[0] == str(lowest.number)  # ranked best first
  [importance] = [v for v in result.verdicts if v.check == 'parameter_importance']
  assert importance.status == 'PASS' and importance.summary.startswith('importance (fANOVA):')
  assert importance.evidence['evaluator'] == 'fANOVA'
  tune_config.tune.metric = 'eval_accuracy'  # the same study cannot change direction
  with pytest.raises(UserError, match='minimizes its metric; this config maximizes it'):
    tune.run(tune_config, str(tmp_path))


def test_an_importance_that_cannot_be_computed_is_a_warning_not_a_pass(monkeypatch):
  trials = [optuna.trial.create_trial(
      params={'x': x}, distributions={'x': optuna.distributions.FloatDistribution(0, 1)},
      value=x) for x in (0.1, 0.5, 0.9)]
  study = optuna.create_study(direction='maximize')
  study.add_trials(trials)

  def broken(*args, **kwargs):
    raise RuntimeError('the evaluator broke')
  monkeypatch.setattr(optuna.importance, 'get_param_importances', broken)
  verdict = tune._importance_verdict(study, trials, seed=0)
  assert verdict.status == 'WARN' and 'the evaluator broke' in verdict.summary
  monkeypatch.undo()
  assert tune._importance_verdict(study, trials, seed=0).status == 'PASS'
  same = [optuna.trial.create_trial(params={'x': 0.5}, distributions=trials[0].distributions,
                                    value=v) for v in (0.1, 0.2, 0.3)]
  assert tune._importance_verdict(study, same, seed=0).status == 'WARN'  # nothing varied
