"""Orbax checkpoints of the train state plus a small JSON of run metadata, with restore fallback."""
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from recipe_jax import files
from recipe_jax.errors import UserError
from recipe_jax.model import user_code

# A read that fails is tried again (a flaky network, a store's transient 503) this many times in
# all, waiting RETRY_WAIT_S, then twice that, ...; only a checkpoint that still fails is corrupt.
RESTORE_ATTEMPTS = 3
RETRY_WAIT_S = 1.0
# Tensorstore (orbax's arrays) retries a store that does not answer 32 times, up to 32 s apart:
# about 15 minutes before a run on gs:// learns its bucket is gone. 6 tries, 1 s to 16 s apart
# (about 30 s, as gcsfs's own retries) ride out a blip and end a run whose store is down. Orbax
# builds its array contexts from these two private dicts (get_ts_context copies them); an orbax
# without them keeps tensorstore's default.
TENSORSTORE_RETRIES = {'max_retries': 6, 'initial_delay': '1s', 'max_delay': '16s'}
try:
  from orbax.checkpoint._src.serialization import tensorstore_utils
  for _context in (tensorstore_utils._BASE_TS_CONTEXT,
                   tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
    _context['gcs_request_retries'] = TENSORSTORE_RETRIES
except (ImportError, AttributeError):  # another orbax layout
  pass


def manager(directory: str, max_to_keep: int, best_metric: str | None = None):
  """Keeps the newest `max_to_keep` checkpoints, or with `best_metric` the ones where that
  metric (passed to `save`) was highest."""
  best = {}
  if best_metric:
    best = dict(best_fn=lambda metrics: metrics[best_metric], best_mode='max',
                keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True, **best)
  return ocp.CheckpointManager(files.absolute(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict, metrics=None) -> None:
  """The state and `meta` (JSON). No input-pipeline state: a step's batch is a pure function
  of (seed, step), so the state's step is where the input resumes."""
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore_latest(mngr: ocp.CheckpointManager, like_state):
  """(state, meta) from the newest checkpoint that restores, or (None, None) if there is none.

  A checkpoint whose arrays have other shapes than this config's state is a UserError, and
  nothing is moved (a changed config is not corruption). A checkpoint that cannot be read is
  moved to `<dir>_corrupt/` (kept for a post-mortem) and the one before it is tried.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return _restore_with_retries(mngr, step, like_state)
    except Exception as e:  # truncated files, bad metadata, ... or another model's shapes
      mismatch = shape_mismatch(os.path.join(str(mngr.directory), str(step)), like_state)
      if mismatch:
        raise UserError(f'the checkpoint at step {step} in {mngr.directory} holds arrays of '
                        f'other shapes than this config builds ({mismatch}); it is another '
                        'run\'s: use a new --workdir, or --config.init_from to start from its '
                        'weights') from None
      quarantine = os.path.join(str(mngr.directory) + '_corrupt', str(step))
      logging.warning('checkpoint at step %d failed to restore %d times (%s); moved it to %s '
                      'and falling back to the one before', step, RESTORE_ATTEMPTS,
                      user_code.one_line(e), quarantine)
      if jax.process_index() == 0:
        files.remove_tree(quarantine)
        files.move(os.path.join(str(mngr.directory), str(step)), quarantine)
      mngr.reload()
  return None, None


def _restore_with_retries(mngr: ocp.CheckpointManager, step: int, like_state):
  """restore_step, tried RESTORE_ATTEMPTS times with a doubling wait; the last error is raised.
  Another config's shapes fail the same way every time: no retry."""
  for attempt in range(1, RESTORE_ATTEMPTS + 1):
    try:
      return restore_step(mngr, step, like_state)
    except Exception as e:  # noqa: BLE001  which errors pass is unknowable: each store has its own
      if attempt == RESTORE_ATTEMPTS or shape_mismatch(
          os.path.join(str(mngr.directory), str(step)), like_state):
        raise
      wait = RETRY_WAIT_S * 2 ** (attempt - 1)
      logging.warning('checkpoint at step %d: read failed (%s); attempt %d of %d in %.0f s',
                      step, user_code.one_line(e), attempt + 1, RESTORE_ATTEMPTS, wait)
      time.sleep(wait)
      mngr.reload()


def shape_mismatch(step_directory: str, like_state) -> str | None:
  """The first array whose saved shape differs from `like_state`'s ('params/Dense_0/kernel
  saved (40, 100), here (40, 7)'), or None (also when the metadata cannot be read)."""
  try:
    saved = _state_metadata(step_directory)
  except Exception:  # noqa: BLE001  unreadable: corruption, handled by the caller
    return None
  saved_shapes = {_name(p): tuple(getattr(m, 'shape', ()) or ())
                  for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(like_state)[0]:
    name = _name(path)
    if name in saved_shapes and saved_shapes[name] != tuple(np.shape(leaf)):
      return f'{name} saved {saved_shapes[name]}, here {tuple(np.shape(leaf))}'
  return None


def _name(path) -> str:
  """'params/Dense_0/kernel' for a tree path, whether its parts are keys or attributes."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _state_metadata(step_directory: str):
  metadata = ocp.PyTreeCheckpointer().metadata(files.join(files.absolute(step_directory),
                                                          'state'))
  tree = getattr(metadata, 'item_metadata', metadata)
  return getattr(tree, 'tree', tree)


def read_state_as_numpy(step_directory: str) -> dict:
  """The saved train state as nested dicts of numpy arrays, whatever device topology wrote it."""
  checkpointer = ocp.PyTreeCheckpointer()
  path = files.join(files.absolute(step_directory), 'state')
  tree = _state_metadata(step_directory)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=restore_args)


def restore_step(mngr: ocp.CheckpointManager, step: int, like_state):
  """(state, meta) of the checkpoint at `step`."""
  abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']
