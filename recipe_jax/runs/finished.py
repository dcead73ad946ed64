"""A finished run directory read back: its config, its final state.

Stages that look at trained models without retraining (evaluate, squeeze) start here.
"""
import os

import jax

from recipe_jax import files
from recipe_jax.config import defaults, selection
from recipe_jax.engine import checkpoints
from recipe_jax.errors import UserError


def read_json(path: str):
  return files.read_json(path)


def load_config(run_dir: str):
  """The run's config.json over today's defaults (a run written before a key existed still
  loads, with that key's default)."""
  path = os.path.join(run_dir, 'config.json')
  if not files.exists(path):
    raise UserError(f'{run_dir} is not a run directory (no config.json); give the --workdir '
                    'of a train run')
  config = defaults.get_config()
  saved = read_json(path)
  saved['optimizer']['decay_at'] = tuple(saved['optimizer'].get('decay_at', (0.5, 0.75)))
  config.update(saved)
  return config


def summary(run_dir: str) -> dict | None:
  path = os.path.join(run_dir, 'summary.json')
  return read_json(path) if files.exists(path) else None


def finished_summary(run_dir: str) -> dict | None:
  """The run's summary once it has finished (None while it is absent or preempted): stages
  made of many runs reuse these instead of training them again."""
  found = summary(run_dir)
  return found if found and found.get('finished') else None


def restore_final_state(exp, run_dir: str, step: int | None = None):
  """The state the run reports (its best checkpoint when early stopping restored it, else its
  last), or the checkpoint at `step`; on the host."""
  like = exp.initial_state(ema=exp.config.ema_decay > 0)
  done = summary(run_dir) or {}
  wanted = step if step is not None else done.get('final_state_step')
  for name in ('checkpoints_best', 'checkpoints'):
    directory = os.path.join(run_dir, name)
    if not files.isdir(directory):
      continue
    mngr = checkpoints.manager(directory, exp.config.max_to_keep)
    try:
      steps = mngr.all_steps()
      if wanted in steps or (wanted is None and steps and name == 'checkpoints'):
        state, _ = checkpoints.restore_step(mngr, wanted if wanted in steps else max(steps),
                                            like)
        return jax.device_get(state)
    finally:
      mngr.close()
  raise UserError(f'no checkpoint at step {wanted} in {run_dir} (checkpoints keep the last '
                  f'{exp.config.max_to_keep}); pass --config.evaluate.step=N of one that exists')


def best_trials(tune_dir: str, top_k: int, metric: str, key: str) -> list:
  """The run directories of the `top_k` best finished trials of the tune stage whose --workdir
  is `tune_dir`, by its validation `metric`, best first (`key`: the setting, for the error)."""
  done = []
  for path in files.glob(os.path.join(tune_dir, 'tune', 'trial_*', 'summary.json')):
    found = read_json(path)
    if found.get('finished') and found.get(metric) is not None:
      done.append((found[metric], os.path.dirname(path)))
  if not done:
    raise UserError(f'{key}: no finished trials in {tune_dir}/tune/trial_*/ (give the '
                    '--workdir of a tune stage)')
  return [d for _, d in selection.ranked(done, metric, lambda found: found[0])[:top_k]]
