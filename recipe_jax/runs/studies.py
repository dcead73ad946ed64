"""An Optuna study as the shared to-do list of workers on one or many machines (the tune and
compare stages): creating or joining it, and the two ways the project ends a trial on purpose.

A trial stopped by a preemption (SIGTERM, Ctrl-C; queued again, to resume from its checkpoint)
or one started after the study had its trials (surplus) ends PRUNED with the user attribute
`ended` saying why, so optuna-dashboard does not show it as a failure and it does not count as
a finished trial. A trial whose worker died (SIGKILL, a lost VM) is failed by Optuna's heartbeat
check and queued again."""
import datetime
import random
import re
import time

import optuna
import optuna.storages._rdb.models as optuna_tables
import sqlalchemy.exc
from absl import logging

from recipe_jax import files
from recipe_jax.model import user_code
from recipe_jax.errors import StorageUnavailable, UserError

optuna.logging.disable_default_handler()  # Optuna's lines go to DIR/log.txt like the others
optuna.logging.enable_propagation()


STORAGE_ATTEMPTS = 3  # a storage that stops answering mid-study: tries in all, waiting
STORAGE_WAIT_S = 5.0  # this long, then twice as long, between them
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer (not even a refusal)
ENDED = 'ended'  # user attribute of a trial the project ended on purpose: 'preempted', 'surplus'


def name_from(directory: str) -> str:
  return re.sub(r'[^\w.-]+', '_', files.absolute(directory)).strip('_')


def open_study(url: str, name: str, heartbeat_s: int, sampler=None, pruner=None,
               attempts: int = 10, direction: str = 'maximize') -> optuna.Study:
  """Creates the study, or joins it. A RUNNING trial whose heartbeat stops for 2 x heartbeat_s
  is failed by the next worker to start a trial and queued again with the same parameters and
  user attributes (its run directory). Workers that start together race to create the
  database tables (a unique-constraint error for all but one); the losers wait and join."""
  for attempt in range(attempts):
    try:
      storage = _ClaimOnceStorage(
          url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
          engine_kwargs={'connect_args': {'connect_timeout': CONNECT_TIMEOUT_S}}
          if url.startswith('postgresql') else None)
      study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                  direction=direction, sampler=sampler, pruner=pruner)
    except ImportError as e:  # a database driver that is not installed
      raise UserError(f'study storage {url}: {user_code.one_line(e)}; pip install the driver') \
          from None
    except sqlalchemy.exc.SQLAlchemyError as e:
      if attempt == attempts - 1:
        raise UserError(f'study storage {url}: {user_code.one_line(e)}') from None
      logging.info('another worker is creating the study (%s); retrying', type(e).__name__)
      time.sleep(0.5 + random.random())
      continue
    if study.direction.name.lower() != direction:
      raise UserError(f"study '{name}' in {url} {study.direction.name.lower()}s its metric; this "
                      f'config {direction}s it: use the metric it was created with, or a new '
                      'study_name')
    return study


class _ClaimOnceStorage(optuna.storages.RDBStorage):
  """Optuna claims a waiting trial by reading its state (SELECT ... FOR UPDATE) and writing
  RUNNING. SQLite ignores FOR UPDATE and Python's sqlite3 begins the transaction only at the
  write, so two workers could both claim one trial (and the second to finish failed on telling
  a COMPLETE trial). Here the claim is one conditional UPDATE: exactly one worker changes the
  row."""

  def set_trial_state_values(self, trial_id, state, values=None) -> bool:
    if state != optuna.trial.TrialState.RUNNING or values is not None:
      return super().set_trial_state_values(trial_id, state, values)
    table = optuna_tables.TrialModel
    with self.scoped_session() as session, session.begin():
      claimed = session.query(table).filter(
          table.trial_id == trial_id, table.state == optuna.trial.TrialState.WAITING).update(
              {table.state: optuna.trial.TrialState.RUNNING}, synchronize_session=False)
      if claimed:
        session.get(table, trial_id).datetime_start = datetime.datetime.now()
    return bool(claimed)


def with_storage_retries(url: str, work):
  """work(); when the study's storage stops answering (a database restarted, a network gap),
  work() again after a wait, STORAGE_ATTEMPTS times in all; then a one-line StorageUnavailable
  (exit 4). A trial
  cut off keeps its run's checkpoints: once its heartbeat is stale, it is queued again and
  resumes from them (now, or when the same command runs again)."""
  for attempt in range(1, STORAGE_ATTEMPTS + 1):
    try:
      return work()
    except Exception as raised:  # noqa: BLE001  re-raised below unless the storage caused it
      e = storage_failure(raised)
      if e is None:
        raise
      if attempt == STORAGE_ATTEMPTS:
        raise StorageUnavailable(f'study storage {url} stopped answering ({user_code.one_line(e)}; '
                        f'{STORAGE_ATTEMPTS} tries); the runs keep their checkpoints: run the '
                        'same command again once it answers') from None
      wait = STORAGE_WAIT_S * 2 ** (attempt - 1)
      logging.warning('study storage %s: %s; trying again in %.0f s (attempt %d of %d)', url,
                      user_code.one_line(e), wait, attempt + 1, STORAGE_ATTEMPTS)
      time.sleep(wait)


def storage_failure(e: BaseException) -> BaseException | None:
  """The storage's error behind `e`, or None. Optuna wraps it (StorageInternalError) or, when
  the storage fails inside a trial's bookkeeping, raises an unrelated error on top of it (an
  UnboundLocalError in optuna 5.1), so the whole chain is searched."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def end_trial(study, trial, why: str, detail: str = ''):
  """Ends `trial` on purpose (`why`: 'preempted' or 'surplus') and this worker's optimize."""
  trial.set_user_attr(ENDED, why)
  study.stop()
  raise optuna.TrialPruned(f'{why}{": " if detail else ""}{detail}')


def ended_on_purpose(trial) -> bool:
  return ENDED in trial.user_attrs


def queue_again(study, number: int) -> None:
  """A preempted trial, back in the study (WAITING, its parameters and run directory) to be
  run again, resuming from its checkpoint."""
  trial = study.get_trials(deepcopy=False)[number]
  history = [*trial.system_attrs.get('retry_history', []), number]
  study.add_trial(optuna.create_trial(
      state=optuna.trial.TrialState.WAITING, params=trial.params,
      distributions=trial.distributions,
      user_attrs={k: v for k, v in trial.user_attrs.items() if k != ENDED},
      system_attrs={'failed_trial': history[0], 'retry_history': history}))
  logging.warning('trial %d saved its checkpoint and is queued to run again', number)
