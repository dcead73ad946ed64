"""Which run a directory holds: the config and the data it was started with.

A run directory (a train run: `DIR/config.json`, `DIR/data.json`) and a stage's folder
(`DIR/<stage>/config.json`, `data.json`) record them when they start. A restart, or a stage that
reuses a finished run, compares: the keys in MAY_CHANGE may differ (logged), anything else is a
one-line UserError naming each key with its old and new value, and nothing of the old run is
touched. So a finished run is never replaced by a run of another config.
"""
from absl import logging

from recipe_jax import files
from recipe_jax.config import check as config_check, defaults
from recipe_jax.errors import RefusedRun
from recipe_jax.runs import provenance

# What a restart may change: how a run is watched, where it reads its data from, the machines it
# runs on, and how long it goes on; never what a step it already took computed.
MAY_CHANGE = (
    'num_train_steps',  # longer only: "leave it training" continues from the last checkpoint
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'max_to_keep',
    'profile_steps', 'eval_batch_size', 'eval_train_split', 'compilation_cache_dir',
    'max_train_val_gap', 'human_baseline', 'seeds_side_by_side',
    'tracking', 'tracking_uri', 'tracking_project',  # where the run is reported, not what it is
    'distributed', 'coordinator_address', 'num_processes', 'process_id',  # a new VM or slice
    'dataset.data_dir', 'dataset.pipeline', 'dataset.grain_threads', 'dataset.prefetch_batches',
    'dataset.device_memory_fraction',  # where and how the same data is read
    'tune.trials',  # more only
    'tune.heartbeat_s', 'compare.heartbeat_s', 'tune.storage', 'compare.storage',
    'recipe.stages', 'recipe.continue_on_fail', 'recipe.rerun',
    'analysis.',  # the error analysis is redone from the final state
)
GROWS_ONLY = ('num_train_steps', 'tune.trials')
STAGE_SECTIONS = tuple(s for s in config_check.STAGES if s != 'train')  # each has its section
READS_TOO = {'squeeze': ('tune',), 'recipe': config_check.RECIPE_STAGES}  # read besides its own


def _may_change(key: str) -> bool:
  return any(key == k or (k.endswith('.') and key.startswith(k)) for k in MAY_CHANGE)


def _relevant(key: str, stage: str | None) -> bool:
  """Whether `key` is part of the identity of a train run (stage None) or a stage's results."""
  section = key.split('.')[0]
  if key == 'stage' or section not in STAGE_SECTIONS:
    return key != 'stage'
  return stage is not None and (section == stage or section in READS_TOO.get(stage, ()))


def _saved_config(path) -> dict:
  """A recorded config over today's defaults (a run written before a key existed compares
  with that key's default)."""
  saved = config_check.flatten(files.read_json(path))
  current = config_check.flatten(defaults.get_config())
  return {k: saved.get(k, v) for k, v in current.items()}


def _comparable(value):
  return list(value) if isinstance(value, tuple) else value


def _resolved(flat: dict) -> dict:
  """A built-in model's width None means its reference width: the same model either way."""
  from recipe_jax.model import models
  if flat.get('model.width') is None:
    return {**flat, 'model.width': models.reference_width(flat.get('model.name', ''))}
  return flat


def differences(old: dict, new: dict, stage: str | None) -> tuple:
  """({key: (old, new)} that may change, {key: (old, new)} that may not)."""
  allowed, refused = {}, {}
  old, new = _resolved(old), _resolved(new)
  for key, value in new.items():
    before = old.get(key, value)
    if not _relevant(key, stage) or _comparable(before) == _comparable(value):
      continue
    grows = key in GROWS_ONLY and before is not None and value < before
    (allowed if _may_change(key) and not grows else refused)[key] = (before, value)
  return allowed, refused


def _words(changes: dict, refused: bool = False) -> str:
  return ', '.join(f'{k}: {_show(a)} -> {_show(b)}' + (
      ' (only a larger value may resume)' if refused and k in GROWS_ONLY else '')
                   for k, (a, b) in changes.items())


def _show(value) -> str:
  return repr(value) if isinstance(value, str) else str(value)


def claim(directory: str, config, stage: str | None = None) -> None:
  """Records `config` (and the identity of its data) as what `directory` holds, after checking
  that what it held before, if anything, is the same run (`check`). A restart rewrites the
  record only for a change MAY_CHANGE allows (a longer run); the same config writes nothing."""
  from recipe_jax import multihost
  data, allowed = _check(directory, config, stage)
  fresh = not files.exists(files.join(directory, 'config.json'))
  if multihost.is_leader() and (fresh or allowed):
    files.write_json(files.join(directory, 'config.json'), config.to_dict())
    files.write_json(files.join(directory, 'data.json'), data)
  if multihost.is_leader():
    provenance.record(directory, config)  # the code beside the config; a restart's is compared


def check(directory: str, config, stage: str | None = None) -> dict:
  """A one-line UserError when `directory` holds a run of another config or other data; the
  changes MAY_CHANGE allows are logged. `stage` None: a train run; else the results of that
  stage (which depend on its own config section too). Writes nothing; returns the identity of
  the config's data."""
  return _check(directory, config, stage)[0]


def _check(directory: str, config, stage: str | None) -> tuple:
  """(the identity of the config's data, {key: (old, new)} of the changes allowed)."""
  from recipe_jax.data import sources
  data = sources.identity(config.dataset)
  config_path, data_path = files.join(directory, 'config.json'), files.join(directory, 'data.json')
  new = config_check.flatten(config)
  what = f'the {stage} stage in {directory}' if stage else f'{directory}'
  if files.exists(config_path):
    allowed, refused = differences(_saved_config(config_path), new, stage)
    old_data = files.read_json(data_path) if files.exists(data_path) else None
    if old_data is not None and old_data != data:
      refused['data'] = (_data_words(old_data), _data_words(data))
    if refused:
      raise RefusedRun(
          f'{what} holds a run of another config: {_words(refused, True)}. Nothing was changed; '
          'use a '
          'new --workdir' + (f', or --config.init_from={directory} to start from its weights'
                             if stage in (None, 'train', 'overfit') else '')
          + (f', or --config.recipe.rerun={stage} to redo it'
             if stage in config_check.RECIPE_STAGES else ''), directory)
    if allowed:
      logging.info('%s: continuing with %s', what, _words(allowed))
    return data, allowed
  return data, {}


REFUSALS = 'refused.json'  # [{time, command, reason}]: starts refused here (the worklog's rows)


def note_refusal(directory: str, reason: str, command: str) -> None:
  """Appends a refused start to DIR/refused.json, beside the run it left untouched. Never
  raises: a refusal that cannot be noted is still a refusal."""
  import time
  path = files.join(directory, REFUSALS)
  try:
    found = files.read_json(path) if files.exists(path) else []
    found = found if isinstance(found, list) else []
    found.append({'time': time.strftime(provenance.TIME_FORMAT), 'timestamp': time.time(),
                  'command': command, 'reason': reason})
    files.write_json(path, found)
  except Exception as e:  # noqa: BLE001  the refusal's own line still reaches the user
    logging.warning('%s: the refusal was not noted (%s)', path, e)


def _data_words(identity: dict) -> str:
  return ' '.join(f'{k}={v}' for k, v in sorted(identity.items()))


def reusable_summary(run_dir: str, config) -> dict | None:
  """A finished train run's summary, for a stage that would train exactly this config there;
  None when it has not finished; a UserError when it finished with another config."""
  from recipe_jax.runs import finished as runs
  found = runs.finished_summary(run_dir)
  if found and files.exists(files.join(run_dir, 'config.json')):
    check(run_dir, config)  # read only: a finished run's files are left as they are
  return found
