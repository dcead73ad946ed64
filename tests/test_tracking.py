"""Experiment tracking (config.tracking): MLflow with a local store, read back through
MlflowClient, and Weights & Biases in offline mode, read back from its run files. A run killed
and resumed continues the same tracked run; a tune study's trials are its children."""
import glob
import json
import signal

import pytest

from conftest import run_main, start_main, wait_for_checkpoint

TRAIN = ['--config=configs/mnist1d/mlp.py', '--config.eval_every_steps=100',
         '--config.checkpoint_every_steps=100']


def mlflow_flags(tmp_path):
  """A local MLflow store; the experiment keeps its artifacts under tmp_path (MLflow's default
  is ./mlruns in the working directory)."""
  from mlflow.tracking import MlflowClient
  client = MlflowClient(f'sqlite:///{tmp_path}/mlflow.db')
  if client.get_experiment_by_name('tests') is None:
    client.create_experiment('tests', artifact_location=str(tmp_path / 'artifacts'))
  return ['--config.tracking=mlflow', f'--config.tracking_uri=sqlite:///{tmp_path}/mlflow.db',
          '--config.tracking_project=tests']


def test_mlflow_keeps_one_run_through_a_sigkill_with_metrics_verdicts_and_artifacts(tmp_path):
  from mlflow.tracking import MlflowClient
  workdir = tmp_path / 'run'
  flags = [*TRAIN, '--config.num_train_steps=3000', *mlflow_flags(tmp_path)]
  worker = start_main(workdir, *flags)
  wait_for_checkpoint(worker, workdir / 'checkpoints')
  worker.send_signal(signal.SIGKILL)
  worker.wait()
  done = run_main(workdir, *flags)  # the same command resumes the run
  assert done.returncode == 0, done.stderr[-3000:]
  client = MlflowClient(f'sqlite:///{tmp_path}/mlflow.db')
  experiment = client.get_experiment_by_name('tests')
  [run] = client.search_runs([experiment.experiment_id])
  assert run.info.status == 'FINISHED'
  assert run.data.params['model.name'] == 'mlp' and run.data.params['seed'] == '0'
  steps = [m.step for m in client.get_metric_history(run.info.run_id, 'eval_accuracy')]
  assert steps == sorted(set(steps)) and steps[-1] == 3000  # no eval logged twice
  assert len(client.get_metric_history(run.info.run_id, 'train_loss')) == len(steps)
  assert run.data.tags['verdict.finished'] == 'PASS'
  artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert {'report.html', 'verdicts.json', 'curves.png'} <= artifacts, artifacts
  with open(workdir / 'tracking.json') as f:
    assert json.load(f)['run_id'] == run.info.run_id


def test_mlflow_nests_a_studys_trials_under_the_stage(tmp_path):
  from mlflow.tracking import MlflowClient
  space = json.dumps({'optimizer.learning_rate': {'type': 'float', 'low': 1e-3, 'high': 1e-2}})
  done = run_main(tmp_path / 'study', '--config=configs/mnist1d/mlp.py', '--config.stage=tune',
                  '--config.tune.trials=2', f'--config.tune.space={space}',
                  '--config.num_train_steps=40', '--config.eval_every_steps=20',
                  *mlflow_flags(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  client = MlflowClient(f'sqlite:///{tmp_path}/mlflow.db')
  runs = client.search_runs([client.get_experiment_by_name('tests').experiment_id])
  [stage] = [r for r in runs if r.data.tags['recipe_jax.kind'] == 'stage']
  trials = [r for r in runs if r is not stage]
  assert len(trials) == 2
  assert all(r.data.tags['mlflow.parentRunId'] == stage.info.run_id for r in trials)
  assert all(r.data.params['optimizer.learning_rate'] != '0.01' for r in trials)  # each its own
  assert 'verdict.trials_finished' in stage.data.tags


def test_wandb_offline_logs_config_metrics_and_verdicts(tmp_path):
  from helpers.wandb_records import records
  workdir = tmp_path / 'run'
  done = run_main(workdir, *TRAIN, '--config.num_train_steps=200', '--config.tracking=wandb',
                  env={'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true'})
  assert done.returncode == 0, done.stderr[-3000:]
  [path] = glob.glob(str(workdir / 'wandb' / 'offline-run-*' / '*.wandb'))
  found = records(path)
  value = lambda item: json.loads(item.value_json)
  key = lambda item: item.key or '/'.join(item.nested_key)
  history = [{key(i): value(i) for i in r.history.item} for r in found if r.HasField('history')]
  assert [h['_step'] for h in history if 'eval_accuracy' in h] == [100, 200]
  assert all('train_loss' in h for h in history)
  summary = {key(i): value(i) for r in found if r.HasField('summary') for i in r.summary.update}
  assert summary['verdict.finished'] == 'PASS'
  [run] = [r.run for r in found if r.HasField('run')]
  config = {key(i): value(i) for i in run.config.update}
  assert config['model.name'] == 'mlp'
  with open(workdir / 'tracking.json') as f:
    assert json.load(f)['run_id'] == run.run_id


def test_tracking_without_its_package_is_one_line(tmp_path, monkeypatch):
  import importlib.util
  from recipe_jax.config import check as config_check
  from recipe_jax.errors import UserError
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'wandb' else real(name, *a))
  with pytest.raises(UserError, match=r'tracking=wandb needs the wandb package: pip install -e '
                     r'"\.\[wandb\]"'):
    config_check.check_tracking_installed('wandb')


def test_tracking_never_stops_training(small_config, tmp_path, monkeypatch, caplog):
  """A server that refuses, or accepts connections and never answers: the run goes on
  untracked within seconds (MLflow's own retries took minutes). A damaged tracking.json: the
  same, the file left as it is. A call failing mid-run: one warning, then untracked."""
  import socket
  import time
  from recipe_jax.runs import tracking
  monkeypatch.setattr(tracking, 'PROBE_TIMEOUT_S', 1.0)
  for name in tracking.MLFLOW_BOUNDS:
    monkeypatch.delenv(name, raising=False)  # set by the first run: restored after the test
  silent = socket.create_server(('127.0.0.1', 0))  # the kernel accepts; nobody reads or answers
  small_config.tracking = 'mlflow'
  for uri in ('http://127.0.0.1:9', f'http://127.0.0.1:{silent.getsockname()[1]}'):
    small_config.tracking_uri = uri
    start = time.time()
    with tracking.tracked(small_config, str(tmp_path / 'unreachable')) as run:
      assert run is None
    assert time.time() - start < 20  # MLflow's defaults: over 3 minutes
    assert f'{uri} does not answer within 1 s' in caplog.text
  silent.close()
  damaged = tmp_path / 'damaged'
  damaged.mkdir()
  (damaged / 'tracking.json').write_text('{"run_id": ')
  small_config.tracking_uri = f'sqlite:///{tmp_path}/mlflow.db'
  with tracking.tracked(small_config, str(damaged)) as run:
    assert run is None
  assert (damaged / 'tracking.json').read_text() == '{"run_id": '
  assert 'tracking.json is damaged' in caplog.text
  mlflow_flags(tmp_path)
  small_config.tracking_uri = f'sqlite:///{tmp_path}/mlflow.db'
  small_config.tracking_project = 'tests'
  with tracking.tracked(small_config, str(tmp_path / 'run')) as run:
    def gone(*args, **kwargs):
      raise ConnectionError('the tracking server went away')
    monkeypatch.setattr(run.client, 'log_batch', gone)
    run.log_evals([{'step': 1, 'eval_accuracy': 0.5}])
    run.log_evals([{'step': 2, 'eval_accuracy': 0.6}])
    assert run.broken
  assert caplog.text.count('this run goes on untracked') == 1
