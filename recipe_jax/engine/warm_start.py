"""Pretrain, then fine-tune: start a run from another run's weights (`config.init_from`).

Parameters and BatchNorm statistics are copied by name where name and shape match; everything
else (a classifier head of another size, a new layer, what `init_from_skip` names) keeps its
fresh initialisation. What was loaded and what was not, with the reason, goes to the log and to
summary.json, so a silent half-load cannot happen; loading no parameter at all is an error.
`init_from_freeze` keeps named parameters fixed (the optimizer gives them zero updates).
"""
import os

import optax
from absl import logging
from flax import traverse_util

from recipe_jax import files
from recipe_jax.engine import checkpoints
from recipe_jax.errors import UserError


def patterns(text: str | None) -> list:
  return [p.strip() for p in (text or '').split(',') if p.strip()]


def matches(name: str, names: list) -> bool:
  """A parameter 'Conv_0/kernel' is named by 'Conv_0/kernel', 'Conv_0' or 'kernel'."""
  parts = name.split('/')
  return any(name == n or n in parts or name.startswith(n + '/') for n in names)


def source_step_dir(path: str) -> str:
  """The checkpoint directory to load: `path` itself when it is one, else the run's reported
  state (its best checkpoint with early stopping), else its latest checkpoint."""
  if files.isdir(os.path.join(path, 'state')):
    return path
  summary = os.path.join(path, 'summary.json')
  done = files.read_json(summary) if files.exists(summary) else {}
  for name in ('checkpoints_best', 'checkpoints'):
    directory = os.path.join(path, name)
    steps = sorted(int(s) for s in files.listdir(directory) if s.isdigit())
    if done.get('final_state_step') in steps:
      return os.path.join(directory, str(done['final_state_step']))
    if steps and name == 'checkpoints':
      return os.path.join(directory, str(steps[-1]))
  raise UserError(f'init_from={path}: no checkpoint there; give a run directory (its '
                  '--workdir) or a checkpoint directory such as RUN/checkpoints/6000')


def load(state, path: str, skip: str | None, tx):
  """(state with the source's matching parameters and statistics, report for summary.json)."""
  step_dir = source_step_dir(path)
  source = checkpoints.read_state_as_numpy(step_dir)
  source_params = source.get('ema_params') or source['params']  # what the source evaluated
  params, loaded_params, fresh = _copy_matching(state.params, source_params, patterns(skip))
  stats, loaded_stats, fresh_stats = _copy_matching(state.batch_stats,
                                                    source.get('batch_stats') or {}, [])
  if not loaded_params:
    raise UserError(f'init_from={path}: no parameter matches by name and shape (the source has '
                    f"{', '.join(sorted(_flat(source_params))[:4])}...; this model "
                    f"{', '.join(sorted(_flat(state.params))[:4])}...): is it the same model?")
  fresh.update({f'batch_stats/{k}': v for k, v in fresh_stats.items()})
  report = {'source': step_dir, 'loaded': loaded_params + [f'batch_stats/{k}'
                                                           for k in loaded_stats],
            'fresh': fresh}
  logging.info('init_from %s: loaded %d arrays; fresh %d: %s', step_dir, len(report['loaded']),
               len(fresh), '; '.join(f'{k} ({why})' for k, why in fresh.items()) or 'none')
  new_state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))
  if state.ema_params:
    new_state = new_state.replace(ema_params=params)
  return new_state, report


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep='/') if tree else {}


def _copy_matching(target, source, skip: list):
  target_flat, source_flat = _flat(target), _flat(source)
  merged, loaded, fresh = {}, [], {}
  for name, leaf in target_flat.items():
    found = source_flat.get(name)
    if matches(name, skip):
      fresh[name] = 'init_from_skip'
    elif found is None:
      fresh[name] = 'not in the source'
    elif tuple(found.shape) != tuple(leaf.shape):
      fresh[name] = f'shape {tuple(found.shape)} in the source, {tuple(leaf.shape)} here'
    else:
      merged[name] = found.astype(leaf.dtype)
      loaded.append(name)
      continue
    merged[name] = leaf
  if not target_flat:
    return target, loaded, fresh
  return traverse_util.unflatten_dict(merged, sep='/'), loaded, fresh


def freeze(tx, frozen: str | None):
  """`tx` with zero updates for the parameters `frozen` names (none: tx unchanged)."""
  names = patterns(frozen)
  if not names:
    return tx

  def labels(params):
    flat = _flat(params)
    unmatched = [n for n in names if not any(matches(k, [n]) for k in flat)]
    if unmatched:
      raise UserError(f"init_from_freeze names {', '.join(unmatched)}, which match no "
                      f"parameter; the model has {', '.join(sorted(flat))}")
    return traverse_util.unflatten_dict(
        {k: 'frozen' if matches(k, names) else 'trained' for k in flat}, sep='/')
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
