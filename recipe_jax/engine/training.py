"""A run from start to end: restore, the loop with its hooks (evals, checkpoints, the best
checkpoint, early stopping, TensorBoard, progress), the final evaluation and the summary; and
the short runs of stages that train briefly. Both go through `loop.run`.
"""
import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from recipe_jax import console
from recipe_jax.engine import batches, checkpoints, evaluate, loop, steps, tensorboard_writer
from recipe_jax import multihost
from recipe_jax.engine.mesh import put_replicated
from recipe_jax.trees import params_sha256
from recipe_jax.errors import UserError
from recipe_jax.engine import warm_start


@dataclasses.dataclass
class RunProgress:
  """What a resumed run needs besides the train state; saved as JSON with every checkpoint."""
  initial_loss: float | None = None  # the first step's loss, the divergence reference
  best_eval_accuracy: float = 0.0
  best_step: int = 0
  wall_s: float = 0.0  # training wall time of the earlier segments of this run
  evals_without_improvement: int = 0
  stopped_early: bool = False
  history: list = dataclasses.field(default_factory=list)  # metrics at every eval
  init_from: dict | None = None  # config.init_from: what was loaded and what was fresh


def train_and_evaluate(exp, workdir: str, on_eval=None, watch=None) -> dict:
  """Trains `exp` (an `experiment.Experiment`), resuming from the latest checkpoint in workdir,
  and returns the run summary: setup, restore, the loop, the final evaluation.
  `on_eval(step, row)` runs after every validation eval with its history row (train and
  validation metrics): a sweep reports to its pruner there, tracking logs it; an exception it
  raises ends the run after the checkpoints are written. `watch(writer)`, when given, makes a
  hook run after every step that writes to the run's TensorBoard (the layer monitor); its
  `summary()` becomes the summary's `layer_monitor`."""
  config, mesh = exp.config, exp.mesh
  if len(exp.dataset.y_val) == 0:
    raise UserError(f'dataset.val_fraction={config.dataset.val_fraction} leaves no validation '
                    'examples; training needs some (e.g. 0.05) to report eval metrics')
  state = put_replicated(mesh, exp.initial_state(ema=config.ema_decay > 0))
  mngr = checkpoints.manager(os.path.join(workdir, 'checkpoints'), config.max_to_keep)
  best_mngr = None
  if config.early_stopping.patience > 0:  # the best validation checkpoint, kept apart
    best_mngr = checkpoints.manager(os.path.join(workdir, 'checkpoints_best'), 1,
                                    best_metric='eval_accuracy')
  loop_finished = False
  try:  # the managers are closed on every way out: an open one fails at interpreter exit
    restored, saved_progress = checkpoints.restore_latest(mngr, state)
    progress = RunProgress(**(saved_progress or {}))
    resumed_from = None
    if restored is not None:  # a fine-tuning run resumes from its own checkpoints
      state, resumed_from = restored, int(restored.step)
      logging.info('resumed from the checkpoint at step %d', resumed_from)
    elif config.init_from:
      warm, progress.init_from = warm_start.load(exp.initial_state(ema=config.ema_decay > 0),
                                                 config.init_from, config.init_from_skip, exp.tx)
      state = put_replicated(mesh, warm)
    splits = evaluate.compile_splits(exp, state)
    state, loop = _train_loop(exp, workdir, state, progress, splits, mngr, best_mngr, on_eval,
                              watch)
    loop_finished = True
  finally:
    for m in filter(None, (mngr, best_mngr)):
      m.wait_until_finished()
    mngr.close()
    if best_mngr and not loop_finished:  # else _final_evaluation reads it, then closes it
      best_mngr.close()
  final = _final_evaluation(exp, workdir, state, progress, splits, best_mngr, loop)
  return {
      'stage': config.stage,
      'step': loop['step'],
      'finished': loop['finished'],
      'preempted': not loop['finished'],
      'resumed_from_step': resumed_from,
      **_last_train_metrics(loop['train_summary'], progress.history),
      **final['eval_metrics'],
      'best_eval_accuracy': progress.best_eval_accuracy,
      'best_eval_step': progress.best_step,
      'stopped_early': progress.stopped_early,
      'final_state_step': final['final_state_step'],  # the best step when early stopping restored it
      **final['test_metrics'],
      'params_sha256': params_sha256(state.params),
      'wall_s': progress.wall_s + time.time() - loop['segment_start'],
      'examples_per_s': loop['examples_per_s'],
      'data_wait_fraction': loop['data_wait_fraction'],
      'layer_monitor': loop['layer_monitor'],
      'num_devices': mesh.size,
      'train_examples': len(exp.dataset.y_train),  # what this run trained on
      'val_examples': len(exp.dataset.y_val),
      'test_examples': len(exp.dataset.y_test),
      'init_from': progress.init_from,
      'history': progress.history,  # train and validation metrics at every eval
  }


def _last_train_metrics(train_summary: dict, history: list) -> dict:
  """This segment's last training metrics, or for a restart that had nothing left to train,
  the last ones recorded at an eval."""
  last = train_summary or (history[-1] if history else {})
  return {k: last.get(k) for k in ('train_loss', 'train_accuracy')}


def _train_loop(exp, workdir, state, progress: RunProgress, splits: dict, mngr, best_mngr,
                on_eval=None, watch=None):
  """Steps until the end, early stopping, a preemption or Ctrl-C, with the hooks of a run:
  train metrics, evals, progress, checkpoints, a profile. Returns (state, facts about the loop
  for the summary)."""
  config = exp.config
  order = batches.BatchOrder(config.seed, len(exp.dataset.y_train), config.batch_size)
  train_step = exp.train_step(order.steps_per_epoch)
  writer = tensorboard_writer.ScalarWriter(workdir, just_logging=not multihost.is_leader())
  step = int(state.step)
  if exp.streamed:
    feed = batches.grain_feed(exp.mesh, exp.dataset, config, step, order)
  else:
    feed = batches.device_feed(exp.mesh, exp.dataset.x_train, exp.dataset.y_train, order)
  window, rate = loop.MetricsWindow(), _Rate(step)
  line = console.ProgressLine(config.num_train_steps, step)
  seen = {'train': {}, 'eval': {}, 'eval_step': None}

  def train_metrics(step, state=None, step_metrics=None):
    flushed = window.flush()
    if flushed:
      seen['train'] = loop.window_summary(*flushed, progress, config, mngr.latest_step())
      writer.write_scalars(step, seen['train'])

  def evaluate_val(step, state, step_metrics):
    train_metrics(step)
    seen['eval'], seen['eval_step'] = evaluate.split_metrics(splits, state, 'val'), step
    writer.write_scalars(step, {**seen['eval'], **rate.since_last(step)})
    progress.history.append({'step': step, **seen['train'], **seen['eval']})
    track_best(step, state, seen['eval'], progress, config, best_mngr)
    if on_eval:
      on_eval(step, progress.history[-1])
    return loop.STOP if progress.stopped_early else None

  def report(step, state, step_metrics):
    line.report(step, seen['train'], seen['eval'], force=seen['eval_step'] == step)

  def save(step, state, step_metrics=None):
    train_metrics(step)
    checkpoints.save(mngr, step, state, dataclasses.asdict(dataclasses.replace(
        progress, wall_s=progress.wall_s + time.time() - segment_start)))
    writer.flush()  # a remote workdir: the events and the log go up with each checkpoint
    console.sync_log()

  profile = _Profile(config, workdir, step) if config.profile_steps > 0 else None
  watch = watch(writer) if watch else None
  hooks = [loop.Hook(window.add),
           *([loop.Hook(watch)] if watch else []),
           loop.Hook(train_metrics, config.log_every_steps, at_stop=True),
           loop.Hook(evaluate_val, config.eval_every_steps),
           loop.Hook(report),
           loop.Hook(save, config.checkpoint_every_steps, at_stop=True),
           *([loop.Hook(profile)] if profile else [])]
  segment_start = time.time()
  try:
    with loop.stop_for_preemption() as preempted:
      last = step if progress.stopped_early else config.num_train_steps  # a finished run
      state, stats = loop.run(train_step, state, feed, first=step, last=last, hooks=hooks,
                              should_stop=preempted, batch_size=config.batch_size)
      if stats.stopped and not progress.stopped_early:
        logging.warning('%s: saved a checkpoint at step %d; the same command resumes',
                        loop.stopped_by(), stats.step)
  finally:
    writer.flush()
    if profile:
      profile.close()
  return state, {
      'step': stats.step,
      'finished': stats.step >= config.num_train_steps or progress.stopped_early,
      'train_summary': seen['train'], 'eval_metrics': seen['eval'], 'writer': writer,
      'segment_start': segment_start, 'examples_per_s': stats.examples_per_s,
      'data_wait_fraction': stats.data_wait_fraction,
      'layer_monitor': watch.summary() if watch else None}


class _Profile:
  """A jax.profiler trace of `profile_steps` steps after the first (compiling) one."""

  def __init__(self, config, workdir: str, first: int):
    self.directory, self.steps = os.path.join(workdir, 'profile'), config.profile_steps
    self.start, self.until, self.tracing = first + 1, first + 1 + self.steps, False
    if self.until > config.num_train_steps:
      logging.warning('profile_steps=%d: fewer steps than that are left; no profile', self.steps)
      self.start = self.until = None

  def __call__(self, step, state, step_metrics):
    if step in (self.start, self.until):
      jax.block_until_ready(state)
    if step == self.start:
      jax.profiler.start_trace(self.directory)
      self.tracing = True
    elif step == self.until:
      self.close()
      logging.info('profile of steps %d-%d in %s', step - self.steps + 1, step, self.directory)

  def close(self):
    if self.tracing:  # at the last profiled step, or on a stop or an error before it
      jax.profiler.stop_trace()
      self.tracing = False


class _Rate:
  """Training steps per second between evals, for TensorBoard."""

  def __init__(self, step: int):
    self.step, self.time = step, time.time()

  def since_last(self, step: int) -> dict:
    now = time.time()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return {'steps_per_sec': rate}


def track_best(step, state, eval_metrics, progress: RunProgress, config, best_mngr) -> None:
  """Best validation accuracy so far (saved to `checkpoints_best/`) and early stopping."""
  stopping = config.early_stopping
  if eval_metrics['eval_accuracy'] > progress.best_eval_accuracy + stopping.min_delta:
    progress.best_eval_accuracy, progress.best_step = eval_metrics['eval_accuracy'], step
    progress.evals_without_improvement = 0
    if best_mngr and step not in best_mngr.all_steps():  # a resumed run replays evals
      checkpoints.save(best_mngr, step, state, {'step': step}, metrics=eval_metrics)
  else:
    progress.evals_without_improvement += 1
  if stopping.patience > 0 and progress.evals_without_improvement >= stopping.patience:
    progress.stopped_early = True
    logging.info('early stopping at step %d: no eval_accuracy gain above %g for %d evals; '
                 'best %.4f at step %d', step, stopping.min_delta, stopping.patience,
                 progress.best_eval_accuracy, progress.best_step)


def _final_evaluation(exp, workdir, state, progress, splits: dict, best_mngr, loop) -> dict:
  """Validation metrics of the final (or, with early stopping, the best) state, and once the
  run has finished the test split: looked at once, at the end, never for selection."""
  config, writer = exp.config, loop['writer']
  final_state, eval_metrics = state, loop['eval_metrics']
  if loop['finished'] and best_mngr and best_mngr.best_step() is not None:
    final_state, _ = checkpoints.restore_latest(best_mngr, state)  # max_to_keep=1: the best
    eval_metrics = evaluate.split_metrics(splits, final_state, 'val')
    logging.info('restored the best checkpoint (step %d) for the final evaluation',
                 best_mngr.best_step())
  if best_mngr:
    best_mngr.close()
  if not eval_metrics:
    eval_metrics = evaluate.split_metrics(splits, state, 'val')
  test_metrics = {}
  if loop['finished']:
    test_metrics = evaluate.split_metrics(splits, final_state, 'test')
    if config.eval_train_split:  # the whole training split in eval mode: can the model fit it?
      test_metrics.update(evaluate.split_metrics(splits, final_state, 'train_split'))
    writer.write_scalars(loop['step'], test_metrics)
  writer.close()
  return {'eval_metrics': eval_metrics, 'test_metrics': test_metrics,
          'final_state_step': int(final_state.step)}


def run_steps(exp, state, x_train, y_train, *, num_steps: int, seed: int, batch_size: int,
              tx=None, augmentation=None, every: int = 0, callback=None, ema_decay: float = 0.0,
              extra_hooks=()):
  """A short run for stages that train briefly (sanity checks, lr_find, SWA): the same loop,
  batch order and compiled step as `train_and_evaluate`, without checkpoints or metric files.

  Args:
    exp: the `experiment.Experiment` (model, loss, mesh, accumulate_steps); `tx` replaces its
      optimizer (SWA's constant rate).
    state: the initial state, on the host; a continued state (SWA) keeps its batch order.
    x_train, y_train: the examples to train on (host arrays).
    every, callback: `callback(steps done, host state)` before the first step, every `every`
      steps, and after the last one (without `every`: after the last one only).
    extra_hooks: more `loop.Hook`s, given the device state (the probes' update ratios).
    ema_decay: > 0 updates `state.ema_params` (which must be initialised) at every step.
  Returns:
    (final state, {'loss', 'accuracy'} per step as numpy arrays), the state on the host.
  """
  first = int(state.step)
  order = batches.BatchOrder(seed, len(y_train), batch_size)
  settings = exp.step_settings(order.steps_per_epoch, tx=tx, augmentation=augmentation,
                               ema_decay=ema_decay, batch_size=batch_size)
  train_step = steps.compile_train_step(settings, exp.mesh)
  history = []
  hooks = [loop.Hook(lambda step, state, step_metrics: history.append(step_metrics))]
  if callback and (every or not num_steps):
    callback(0, state)
  if callback:
    def watch(step, state, step_metrics):
      done = step - first
      if (every and done % every == 0) or done == num_steps:
        callback(done, jax.device_get(state))
    hooks.append(loop.Hook(watch))
  hooks += list(extra_hooks)
  state, _ = loop.run(train_step, put_replicated(exp.mesh, state),
                      batches.device_feed(exp.mesh, x_train, y_train, order),
                      first=first, last=first + num_steps, hooks=hooks)
  history = jax.device_get(history)
  return jax.device_get(state), {k: np.array([m[k] for m in history])
                                 for k in ('loss', 'accuracy')}

