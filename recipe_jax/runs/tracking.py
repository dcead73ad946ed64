"""Experiment tracking (`config.tracking=mlflow|wandb`): each run directory is one tracked run.

Logged: the resolved config (as parameters), the training and validation metrics at every
eval, the verdicts (tags `verdict.<check>` and a table) and report.html with the pictures as
artifacts. A run trained inside a multi-run stage (compare, tune, data_scaling, squeeze, recipe)
is a child of the stage's run: MLflow nests it under the stage's run, W&B groups it with it.

The tracked run's id is kept in `DIR/tracking.json`, so a resumed run (after SIGTERM, SIGKILL,
on a new VM with the workdir on gs://) continues the same tracked run rather than starting a
second; evals replayed after a resume are not logged twice. Only process 0 logs.
"""
import contextlib
import os
import time


from recipe_jax import files
from recipe_jax.config import check as config_check

_parent = {'run': None}  # the innermost tracked run open in this process: runs opened now nest
_open = {}  # run directory -> its tracked run while open


def _flat_config(config) -> dict:
  return {k: str(v)[:500] for k, v in config_check.flatten(config).items()}


def _is_leader() -> bool:
  from recipe_jax.engine import multihost
  return multihost.is_leader()


@contextlib.contextmanager
def tracked(config, run_dir: str, kind: str = 'run'):
  """The run directory's tracked run while the block runs (None when tracking is off or this
  is not process 0): created, or resumed from DIR/tracking.json, and closed at the end, unless
  an enclosing block has it open already. Runs opened inside the block are its children. Set
  `run.finished = False` for a run that stopped before its end."""
  if config.tracking == 'none' or not _is_leader():
    yield None
    return
  if run_dir in _open:  # the train stage's run, opened by main, trained by run_training
    yield _open[run_dir]
    return
  config_check.check_tracking_installed(config.tracking)
  path = files.join(run_dir, 'tracking.json')
  known = files.read_json(path) if files.exists(path) else {}
  backend = {'mlflow': _MLflow, 'wandb': _Wandb}[config.tracking]
  run = backend(config, run_dir, known.get('run_id'), kind, _parent['run'])
  if known.get('run_id') != run.run_id:
    files.write_json(path, {'backend': config.tracking, 'run_id': run.run_id})
  run.finished = True
  _open[run_dir], before, _parent['run'] = run, _parent['run'], run
  try:
    yield run
  except BaseException:
    run.finished = False
    raise
  finally:
    _parent['run'] = before
    del _open[run_dir]
    run.close(run.finished)


def log_result(run, workdir: str, result) -> None:
  """A stage's verdicts and report.html with its pictures, on the stage's tracked run."""
  if run is None:
    return
  run.log_verdicts(result.verdicts)
  report = files.join(workdir, 'report.html')
  artifacts = [report] if files.exists(report) else []
  artifacts += [files.join(workdir, p) for paths in result.images.values() for p in paths]
  run.log_files([p for p in artifacts if not p.startswith('gs://')])
  run.finished = result.finished


class _MLflow:
  """An MLflow run through MlflowClient (explicit run ids: no process-global active run)."""

  def __init__(self, config, run_dir: str, run_id, kind: str, parent):
    from mlflow.tracking import MlflowClient
    self.client = MlflowClient(tracking_uri=config.tracking_uri or None)
    if run_id:
      self.run_id = run_id
      self.client.update_run(run_id, status='RUNNING')
      return
    experiment = self.client.get_experiment_by_name(config.tracking_project)
    experiment_id = (experiment.experiment_id if experiment
                     else self.client.create_experiment(config.tracking_project))
    tags = {'recipe_jax.run_dir': files.absolute(run_dir), 'recipe_jax.stage': config.stage,
            'recipe_jax.kind': kind}
    if parent is not None:
      tags['mlflow.parentRunId'] = parent.run_id
    self.run_id = self.client.create_run(experiment_id, tags=tags,
                                         run_name=_name(run_dir)).info.run_id
    self._log_config(config)

  def _log_config(self, config):
    from mlflow.entities import Param
    params = [Param(k, v) for k, v in _flat_config(config).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
      self.client.log_batch(self.run_id, params=params[start:start + 100])

  def log_evals(self, rows: list) -> None:
    from mlflow.entities import Metric
    history = self.client.get_metric_history(self.run_id, 'eval_accuracy')
    logged = max((m.step for m in history), default=-1)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, row['step']) for row in rows if row['step'] > logged
               for k, v in row.items() if k != 'step' and v is not None]
    for start in range(0, len(metrics), 1000):
      self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

  def log_verdicts(self, verdicts: list) -> None:
    for v in verdicts:
      self.client.set_tag(self.run_id, f'verdict.{v.check}', v.status)
    self.client.log_dict(self.run_id, {'columns': ['check', 'status', 'summary'], 'data': [
        [v.check, v.status, v.summary] for v in verdicts]}, 'verdicts.json')

  def log_files(self, paths: list) -> None:
    for path in paths:
      self.client.log_artifact(self.run_id, path)

  def close(self, finished: bool) -> None:
    self.client.set_terminated(self.run_id, 'FINISHED' if finished else 'KILLED')


class _Wandb:
  """A Weights & Biases run (offline when WANDB_MODE=offline); a child joins its stage's group."""

  def __init__(self, config, run_dir: str, run_id, kind: str, parent):
    import wandb
    local = not run_dir.startswith('gs://')
    if local:
      os.makedirs(run_dir, exist_ok=True)
    self.run = wandb.init(
        project=config.tracking_project, id=run_id,
        resume='allow', name=_name(run_dir), job_type=kind,
        group=_name(parent.run_dir) if parent else _name(run_dir),
        dir=run_dir if local else None, config=_flat_config(config),
        reinit='create_new', settings=wandb.Settings(silent=True))
    self.run_id, self.run_dir = self.run.id, run_dir

  def log_evals(self, rows: list) -> None:
    for row in rows:
      if row['step'] > self.run.step or (row['step'] == 0 and not self.run.step):
        self.run.log({k: v for k, v in row.items() if k != 'step' and v is not None},
                     step=row['step'])

  def log_verdicts(self, verdicts: list) -> None:
    import wandb
    for v in verdicts:
      self.run.summary[f'verdict.{v.check}'] = v.status
    self.run.log({'verdicts': wandb.Table(columns=['check', 'status', 'summary'],
                                          data=[[v.check, v.status, v.summary]
                                                for v in verdicts])})

  def log_files(self, paths: list) -> None:
    for path in paths:
      self.run.save(path, base_path=os.path.dirname(path), policy='now')

  def close(self, finished: bool) -> None:
    self.run.finish(exit_code=0 if finished else 1)


def _name(run_dir: str) -> str:
  """The last two parts of the directory: 'compare/dropout', 'tune/trial_3', 'runs/cnn'."""
  parts = [p for p in run_dir.rstrip('/').split('/') if p]
  return '/'.join(parts[-2:])
