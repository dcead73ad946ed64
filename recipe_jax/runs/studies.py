"""An Optuna study as the shared to-do list of workers on one or many machines (the tune and
compare stages): creating or joining it, and the two ways a trial ends without a result."""
import random
import re
import time

import optuna
import sqlalchemy.exc
from absl import logging

from recipe_jax import files
from recipe_jax.model import user_code
from recipe_jax.errors import UserError

optuna.logging.disable_default_handler()  # Optuna's lines go to DIR/log.txt like the others
optuna.logging.enable_propagation()


class Preempted(Exception):
  """SIGTERM stopped a trial after its checkpoint; `queue_again` puts it back in the study."""


class Surplus(Exception):
  """The study already has its trials (finished or started earlier); this one does not run."""


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
      storage = optuna.storages.RDBStorage(
          url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
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


def queue_again(study, trial) -> None:
  """A preempted trial, back in the study to be run again (resuming from its checkpoint)."""
  optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)
  logging.warning('trial %d saved its checkpoint and is queued to run again', trial.number)
