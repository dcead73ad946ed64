"""Orbax checkpoints of the train state plus a small JSON of run metadata, with restore fallback."""
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def manager(directory: str, max_to_keep: int, best_metric: str | None = None):
  """Keeps the newest `max_to_keep` checkpoints, or with `best_metric` the ones where that
  metric (passed to `save`) was highest."""
  best = {}
  if best_metric:
    best = dict(best_fn=lambda metrics: metrics[best_metric], best_mode='max',
                keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True, **best)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict, metrics=None) -> None:
  """The state and `meta` (JSON). No input-pipeline state: a step's batch is a pure function
  of (seed, step), so the state's step is where the input resumes."""
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore_latest(mngr: ocp.CheckpointManager, like_state):
  """(state, meta) from the newest checkpoint that restores, or (None, None) if there is none.

  A checkpoint that fails to restore is moved to `<dir>_corrupt/` (kept for a post-mortem)
  and the one before it is tried.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return restore_step(mngr, step, like_state)
    except Exception as e:  # any corruption: truncated files, bad metadata, wrong shapes
      quarantine = os.path.join(str(mngr.directory) + '_corrupt', str(step))
      logging.warning('checkpoint at step %d failed to restore (%s: %s); moved it to %s and '
                      'falling back to the one before', step, type(e).__name__,
                      str(e).splitlines()[0][:200], quarantine)
      if jax.process_index() == 0:
        shutil.rmtree(quarantine, ignore_errors=True)
        shutil.move(os.path.join(str(mngr.directory), str(step)), quarantine)
      mngr.reload()
  return None, None


def read_state_as_numpy(step_directory: str) -> dict:
  """The saved train state as nested dicts of numpy arrays, whatever device topology wrote it."""
  checkpointer = ocp.PyTreeCheckpointer()
  path = os.path.join(os.path.abspath(step_directory), 'state')
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=restore_args)


def restore_step(mngr: ocp.CheckpointManager, step: int, like_state):
  """(state, meta) of the checkpoint at `step`."""
  abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']
