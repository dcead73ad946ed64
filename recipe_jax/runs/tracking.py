"""Experiment tracking (`config.tracking=mlflow|wandb`): each run directory is one tracked run.

Logged: the resolved config (as parameters), the training and validation metrics at every
eval, the verdicts (tags `verdict.<check>` and a table) and report.html with the pictures as
artifacts. A run trained inside a multi-run stage (compare, tune, data_scaling, squeeze, recipe)
is a child of the stage's run: MLflow nests it under the stage's run, W&B groups it with it.

The tracked run's id is kept in `DIR/tracking.json` with where it is tracked, so a resumed run
(after SIGTERM, SIGKILL, on a new VM with the workdir on gs://) continues the same tracked run
rather than starting a second; evals replayed after a resume are not logged twice. Tracking to
another backend, server or project starts a new tracked run. Only process 0 logs. Tracking
never stops training: a failing tracking call is one warning, and the run goes on untracked.
"""
import contextlib
import functools
import os
import tempfile
import time
import urllib.error
import urllib.request

from absl import logging

from recipe_jax import files
from recipe_jax.config import check as config_check
from recipe_jax.errors import UserError
from recipe_jax import words

PROBE_TIMEOUT_S = 5.0  # a tracking server that does not answer this fast is not used
# Each MLflow call's bounds (a user's own settings win): a server that stops answering mid-run
# costs seconds, not MLflow's default minutes of retries.
MLFLOW_BOUNDS = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2',
                 'MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR': '1', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '15'}

_parent = {'run': None}  # the innermost tracked run open in this process: runs opened now nest
_open = {}  # run directory -> its tracked run while open


def _flat_config(config) -> dict:
  return {k: str(v)[:500] for k, v in config_check.flatten(config).items()}


def _is_leader() -> bool:
  from recipe_jax import multihost
  return multihost.is_leader()


def _where(config) -> dict:
  return {'backend': config.tracking, 'uri': config.tracking_uri,
          'project': config.tracking_project}


@contextlib.contextmanager
def tracked(config, run_dir: str, kind: str = 'run'):
  """The run directory's tracked run while the block runs (None when tracking is off, this is
  not process 0, or the backend cannot be reached): created, or resumed from DIR/tracking.json,
  and closed at the end, unless an enclosing block has it open already. Runs opened inside the
  block are its children. Set `run.status = 'KILLED'` for a run that stopped before its end."""
  if config.tracking == 'none' or not _is_leader():
    yield None
    return
  if run_dir in _open:  # the train stage's run, opened by main, trained by run_training
    yield _open[run_dir]
    return
  run = _start(config, run_dir, kind)
  if run is None:
    yield None
    return
  _open[run_dir], before, _parent['run'] = run, _parent['run'], run
  try:
    yield run
  except BaseException as e:
    # A pruned trial stopped early on purpose; anything else is a failure.
    run.status = 'KILLED' if type(e).__name__ in ('TrialPruned', 'KeyboardInterrupt') else 'FAILED'
    raise
  finally:
    _parent['run'] = before
    del _open[run_dir]
    run.close(run.status)


def _start(config, run_dir: str, kind: str):
  config_check.check_tracking_installed(config.tracking)
  path = files.join(run_dir, 'tracking.json')
  try:
    known = files.read_json(path) if files.exists(path) else {}
  except UserError as e:  # damaged: left as it is for a person to look at
    logging.warning('tracking=%s: %s; training goes on untracked', config.tracking, e)
    return None
  same_place = {k: known.get(k) for k in ('backend', 'uri', 'project')} == _where(config)
  backend = {'mlflow': _MLflow, 'wandb': _Wandb}[config.tracking]
  try:
    run = backend(config, run_dir, known.get('run_id') if same_place else None, kind,
                  _parent['run'])
  except Exception as e:  # an unreachable server, a bad URI, a deleted run
    logging.warning('tracking=%s: cannot start a tracked run for %s (%s: %s); training goes '
                    'on untracked', config.tracking, run_dir, type(e).__name__, e)
    return None
  if known.get('run_id') != run.run_id or not same_place:
    files.write_json(path, {**_where(config), 'run_id': run.run_id})
  run.status = 'FINISHED'
  return run


def log_result(run, workdir: str, result) -> None:
  """A stage's verdicts and report.html with its pictures, on the stage's tracked run."""
  if run is None:
    return
  run.log_verdicts(result.verdicts)
  report = files.join(workdir, 'report.html')
  artifacts = [report] if files.exists(report) else []
  artifacts += [files.join(workdir, p) for paths in result.images.values() for p in paths]
  with tempfile.TemporaryDirectory() as local:
    run.log_files([_local_copy(p, local) for p in artifacts])
  if not result.finished:
    run.status = 'KILLED'


def _local_copy(path: str, directory: str) -> str:
  """A remote file (gs://) copied into `directory` for the backend to upload; a local one as is."""
  if not files.is_remote(path):
    return path
  local = os.path.join(directory, os.path.basename(path))
  with open(local, 'wb') as f:
    f.write(files.read_bytes(path))
  return local


def _warns(method):
  """A tracking call that fails warns once and turns the run's tracking off: tracking never
  stops training."""
  @functools.wraps(method)
  def call(self, *args, **kwargs):
    if self.broken:
      return None
    try:
      return method(self, *args, **kwargs)
    except Exception as e:
      self.broken = True
      logging.warning('tracking: %s failed (%s: %s); this run goes on untracked',
                      method.__name__, type(e).__name__, e)
      return None
  return call


def _not_answering(uri: str) -> str | None:
  """Why an http(s) tracking server does not answer within PROBE_TIMEOUT_S, or None when it
  answers (any HTTP status) or the URI is not a server's (a file, a database)."""
  if not uri.startswith(('http://', 'https://')):
    return None
  try:
    urllib.request.urlopen(uri.rstrip('/') + '/health', timeout=PROBE_TIMEOUT_S).close()
  except urllib.error.HTTPError:
    return None  # it answered
  except (OSError, ValueError) as e:  # refused, timed out, no such host
    return f'{type(e).__name__}: {getattr(e, "reason", e)}'
  return None


class _MLflow:
  """An MLflow run through MlflowClient (explicit run ids: no process-global active run)."""
  broken = False

  def __init__(self, config, run_dir: str, run_id, kind: str, parent):
    for name, value in MLFLOW_BOUNDS.items():
      os.environ.setdefault(name, value)
    silent = _not_answering(config.tracking_uri or '')
    if silent:
      raise ConnectionError(f'{config.tracking_uri} does not answer within '
                            f'{PROBE_TIMEOUT_S:g} s ({silent})')
    from mlflow.tracking import MlflowClient
    self.client = MlflowClient(tracking_uri=config.tracking_uri or None)
    if run_id:
      self.run_id = run_id
      self.client.update_run(run_id, status='RUNNING')  # raises for an unknown id
      return
    experiment_id = self._experiment(config.tracking_project)
    tags = {'recipe_jax.run_dir': files.absolute(run_dir), 'recipe_jax.stage': config.stage,
            'recipe_jax.kind': kind}
    if parent is not None and isinstance(parent, _MLflow):
      tags['mlflow.parentRunId'] = parent.run_id
    self.run_id = self.client.create_run(experiment_id, tags=tags,
                                         run_name=_name(run_dir)).info.run_id
    self._log_config(config)

  def _experiment(self, name: str) -> str:
    found = self.client.get_experiment_by_name(name)
    if found:
      return found.experiment_id
    try:
      return self.client.create_experiment(name)
    except Exception:  # another worker created it first
      return self.client.get_experiment_by_name(name).experiment_id

  def _log_config(self, config):
    from mlflow.entities import Param
    params = [Param(k, v) for k, v in _flat_config(config).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
      self.client.log_batch(self.run_id, params=params[start:start + 100])

  @_warns
  def log_evals(self, rows: list) -> None:
    from mlflow.entities import Metric
    history = self.client.get_metric_history(self.run_id, 'eval_accuracy')
    logged = max((m.step for m in history), default=-1)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, row['step']) for row in rows if row['step'] > logged
               for k, v in row.items() if k != 'step' and v is not None]
    for start in range(0, len(metrics), 1000):
      self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

  @_warns
  def log_verdicts(self, verdicts: list) -> None:
    for v in verdicts:
      self.client.set_tag(self.run_id, f'verdict.{v.check}', v.status)
    self.client.log_dict(self.run_id, {'columns': ['check', 'status', 'summary'], 'data': [
        [v.check, v.status, words.sentence(v)] for v in verdicts]}, 'verdicts.json')

  @_warns
  def log_files(self, paths: list) -> None:
    for path in paths:
      self.client.log_artifact(self.run_id, path)

  @_warns
  def close(self, status: str) -> None:
    self.client.set_terminated(self.run_id, status)


class _Wandb:
  """A Weights & Biases run (offline when WANDB_MODE=offline); a child joins its stage's group."""
  broken = False

  def __init__(self, config, run_dir: str, run_id, kind: str, parent):
    import wandb
    local = not files.is_remote(run_dir)
    if local:
      os.makedirs(run_dir, exist_ok=True)
    self.run = wandb.init(
        project=config.tracking_project, id=run_id, resume='allow', name=_name(run_dir),
        job_type=kind, group=_name(parent.run_dir) if parent else _name(run_dir),
        dir=run_dir if local else None, config=_flat_config(config),
        reinit='create_new', settings=wandb.Settings(silent=True))
    self.run_id, self.run_dir = self.run.id, run_dir

  @_warns
  def log_evals(self, rows: list) -> None:
    for row in rows:
      if row['step'] > self.run.step or (row['step'] == 0 and not self.run.step):
        self.run.log({k: v for k, v in row.items() if k != 'step' and v is not None},
                     step=row['step'])

  @_warns
  def log_verdicts(self, verdicts: list) -> None:
    import wandb
    for v in verdicts:
      self.run.summary[f'verdict.{v.check}'] = v.status
    self.run.log({'verdicts': wandb.Table(columns=['check', 'status', 'summary'],
                                          data=[[v.check, v.status, words.sentence(v)]
                                                for v in verdicts])})

  @_warns
  def log_files(self, paths: list) -> None:
    for path in paths:
      self.run.save(path, base_path=os.path.dirname(path), policy='now')

  @_warns
  def close(self, status: str) -> None:
    self.run.finish(exit_code=0 if status == 'FINISHED' else 1)


def _name(run_dir: str) -> str:
  """The last two parts of the directory: 'compare/dropout', 'tune/trial_3', 'runs/cnn'."""
  parts = [p for p in run_dir.rstrip('/').split('/') if p]
  return '/'.join(parts[-2:])
