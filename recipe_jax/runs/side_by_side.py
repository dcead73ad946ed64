"""Several seeds of one config trained side by side, as one jitted program.

The train step is `jax.vmap`ped over the train state, the seed (its init, dropout and
augmentation keys) and the epoch's batch order, so N small models fill the device that one
leaves idle. Each seed computes what it computes alone, up to float reassociation in the
batched kernels (tests/test_side_by_side.py: the losses of 30 steps within 1e-4 relative of the
run alone; after 40 steps at least 99% of the parameters within 1e-3, because Adam turns a
near-zero gradient's rounding into an lr-sized step of either sign); a side-by-side run is
itself bit-reproducible.

The seeds end as ordinary run directories. This loop saves each seed's checkpoints with its
`RunProgress` (history, best eval, first loss); `driver.run_training` then finds each run at
its last step and writes the summary, test metrics and error analysis exactly as for a run
trained alone. A restart resumes side by side when every seed's latest checkpoint is at the
same step; anything this loop does not handle (a diverged seed, seeds at different steps)
falls back to training the seeds one at a time from their checkpoints.
"""
import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from recipe_jax import console
from recipe_jax.engine import (batches, checkpoints, evaluate, experiment, loop, steps,
                               tensorboard_writer, training)
from recipe_jax.engine.mesh import put_replicated
from recipe_jax.errors import DivergenceError
from recipe_jax.runs import store as run_store

FINISHED, PREEMPTED, ONE_AT_A_TIME = 'finished', 'preempted', 'one at a time'


def enabled(config) -> bool:
  setting = config.seeds_side_by_side
  return setting == 'on' or (setting == 'auto' and jax.default_backend() != 'cpu')


def run_steps(exp, x, y, num_steps: int, seeds) -> dict:
  """`exp.run_steps` for several seeds at once (lr_find): {'loss', 'accuracy'} per seed and
  step, as numpy arrays of shape (seeds, steps)."""
  orders = [batches.BatchOrder(s, len(y), exp.config.batch_size) for s in seeds]
  train_step = steps.compile_train_step(
      exp.step_settings(orders[0].steps_per_epoch, ema_decay=0.0), exp.mesh, side_by_side=True)
  states = put_replicated(exp.mesh, _stacked([exp.initial_state(int(s)) for s in seeds]))
  history = []
  loop.run(train_step, states, batches.device_feed(exp.mesh, x, y, orders), first=0,
           last=num_steps, hooks=[loop.Hook(lambda step, state, m: history.append(m))])
  history = jax.device_get(history)
  return {k: np.stack([m[k] for m in history], axis=1) for k in ('loss', 'accuracy')}


def _stacked(trees: list):
  return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)


def why_not(configs: list) -> str | None:
  """Why these runs cannot train side by side, or None when they can."""
  first = configs[0]
  if not enabled(first):
    return f'seeds_side_by_side={first.seeds_side_by_side} on {jax.default_backend()}'
  if len(configs) < 2:
    return 'one run'
  if first.early_stopping.patience > 0:
    return 'early stopping ends each seed at its own step'
  if first.init_from:
    return 'init_from loads each run by itself'
  if first.dataset.pipeline != 'device':
    return f'dataset.pipeline={first.dataset.pipeline} streams one run\'s batches'
  if jax.process_count() > 1:
    return 'multi-host runs train one seed at a time'
  strip = lambda c: {k: v for k, v in c.to_dict().items() if k != 'seed'}
  if any(strip(c) != strip(first) for c in configs[1:]):
    return 'the runs differ in more than the seed'
  return None


def train_unfinished(configs: list, run_dirs: list) -> bool:
  """compare and squeeze: trains the runs not finished yet side by side where that is on and
  possible (they then only need their final evaluation, `driver.run_training`); False when
  SIGTERM stopped them."""
  todo = [(c, d) for c, d in zip(configs, run_dirs) if run_store.reusable_summary(d, c) is None]
  why = why_not([c for c, _ in todo]) if todo else 'none left'
  if why:
    if len(todo) > 1:
      console.info_once('seeds one at a time: %s', why)
    return True
  logging.info('training seeds %s side by side', ', '.join(str(c.seed) for c, _ in todo))
  return train(*map(list, zip(*todo))) != PREEMPTED


def train(configs: list, run_dirs: list) -> str:
  """Trains the runs (configs that differ only in `seed`) side by side up to num_train_steps,
  leaving their checkpoints in run_dirs. Returns FINISHED, PREEMPTED (SIGTERM: checkpoints
  saved) or ONE_AT_A_TIME (the caller trains them sequentially, from their checkpoints)."""
  config = configs[0]
  exp = experiment.build(config)
  for c, d in zip(configs, run_dirs):  # each directory holds this run, or nothing yet
    run_store.claim(d, c)
  seeds = np.array([c.seed for c in configs], np.int32)
  managers = [checkpoints.manager(os.path.join(d, 'checkpoints'), config.max_to_keep)
              for d in run_dirs]
  try:
    start = _restore(exp, seeds, managers)
    if start is None:
      logging.info('side by side: the seeds are at different steps; one at a time instead')
      return ONE_AT_A_TIME
    states, progress = start
    writers = [tensorboard_writer.ScalarWriter(d) for d in run_dirs]
    try:
      return _loop(exp, seeds, states, progress, managers, writers)
    except DivergenceError as e:
      logging.warning('side by side: %s; training the seeds one at a time from their '
                      'checkpoints', e)
      return ONE_AT_A_TIME
    finally:
      for writer in writers:
        writer.close()
  finally:
    for mngr in managers:
      mngr.wait_until_finished()
      mngr.close()


def _restore(exp, seeds, managers):
  """(stacked states, [RunProgress]) from each run's latest checkpoint (or a fresh init), or
  None when the runs' latest steps differ."""
  ema = exp.config.ema_decay > 0
  states, progress = [], []
  for seed, mngr in zip(seeds, managers):
    fresh = put_replicated(exp.mesh, exp.initial_state(int(seed), ema=ema))
    restored, meta = checkpoints.restore_latest(mngr, fresh)
    states.append(jax.device_get(fresh if restored is None else restored))
    progress.append(training.RunProgress(**(meta or {})))
  if len({int(s.step) for s in states}) > 1:
    return None
  return _stacked(states), progress


def _seed_slice(tree, i: int):
  return jax.tree.map(lambda a: a[i], tree)


def _loop(exp, seeds, states, progress: list, managers: list, writers: list) -> str:
  """The loop of `driver.run_training` with each hook done for every seed."""
  config, mesh, dataset = exp.config, exp.mesh, exp.dataset
  orders = [batches.BatchOrder(s, len(dataset.y_train), config.batch_size) for s in seeds]
  train_step = exp.train_step(orders[0].steps_per_epoch, side_by_side=True)
  states = put_replicated(mesh, states)
  evaluate_all = evaluate.compile_evaluator(exp.model, mesh, states, dataset.x_val,
                                            dataset.y_val, config.eval_batch_size, exp.loss_fn,
                                            config.ema_decay > 0, side_by_side=True)
  step = int(states.step[0])
  line, window = console.ProgressLine(config.num_train_steps, step), loop.MetricsWindow()
  logging.info('side by side: seeds %s from step %d', ', '.join(map(str, seeds)), step)
  seen = {'train': [{} for _ in seeds], 'eval': [{} for _ in seeds], 'eval_step': None}

  def train_metrics(step, state=None, step_metrics=None):
    flushed = window.flush()
    if flushed:
      steps_done, values = flushed  # leaves (steps, seeds)
      seen['train'] = [loop.window_summary(steps_done, {k: v[:, i] for k, v in values.items()},
                                           run, config, mngr.latest_step())
                       for i, (run, mngr) in enumerate(zip(progress, managers))]
      for writer, summary in zip(writers, seen['train']):
        writer.write_scalars(step, summary)

  def evaluate_val(step, state, step_metrics):
    train_metrics(step)
    found, seen['eval_step'] = evaluate_all(state), step
    for i, (writer, run) in enumerate(zip(writers, progress)):
      seen['eval'][i] = {f'eval_{k}': float(v[i]) for k, v in found.items()}
      writer.write_scalars(step, seen['eval'][i])
      run.history.append({'step': step, **seen['train'][i], **seen['eval'][i]})
      training.track_best(step, None, seen['eval'][i], run, config, None)

  def report(step, state, step_metrics):
    line.report(step, _mean(seen['train']), _mean(seen['eval']),
                force=seen['eval_step'] == step)

  def save(step, state, step_metrics):
    train_metrics(step)
    _save(mesh, state, step, progress, managers, time.time() - segment_start)

  hooks = [loop.Hook(window.add), loop.Hook(train_metrics, config.log_every_steps),
           loop.Hook(evaluate_val, config.eval_every_steps), loop.Hook(report),
           loop.Hook(save, config.checkpoint_every_steps, at_stop=True)]
  segment_start = time.time()
  with loop.stop_for_preemption() as preempted:
    _, stats = loop.run(train_step, states,
                        batches.device_feed(mesh, dataset.x_train, dataset.y_train, orders),
                        first=step, last=config.num_train_steps, hooks=hooks,
                        should_stop=preempted)
  if stats.stopped:
    logging.warning('%s: saved the seeds\' checkpoints at step %d; the same command resumes',
                    loop.stopped_by(), stats.step)
    return PREEMPTED
  return FINISHED


def _save(mesh, states, step: int, progress: list, managers: list, segment_s: float) -> None:
  host = jax.device_get(states)
  for i, (run, mngr) in enumerate(zip(progress, managers)):
    # Each run's wall time is the group's: they trained together.
    meta = dataclasses.asdict(dataclasses.replace(run, wall_s=run.wall_s + segment_s))
    checkpoints.save(mngr, step, put_replicated(mesh, _seed_slice(host, i)), meta)


def _mean(per_seed: list) -> dict:
  """The seeds' mean metrics, for the one console line of the group."""
  if not per_seed or not per_seed[0]:
    return {}
  return {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
