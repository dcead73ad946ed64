"""The one training loop. Every training in the project runs through `run`: train, the short
runs of sanity, lr_find and SWA, and seeds side by side. What happens besides the steps
(metrics, evals, checkpoints, progress, profiles) are `Hook`s the caller passes, each timed by
`itstime`; the loop itself only feeds, steps, times, and stops when asked.
"""
import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics

from recipe_jax.errors import DivergenceError
from recipe_jax.model import user_code

STOP = 'stop'  # a hook returns it to end the loop after this step (early stopping)


def itstime(step: int, every: int, last: int) -> bool:
  """The one rule for periodic actions: every `every` steps (0: never) and after the last."""
  return (every > 0 and step % every == 0) or step == last


@dataclasses.dataclass
class Hook:
  """`run(step, state, step_metrics)` after a step when `itstime(step, every, last)`, and with
  `at_stop` also after the step the loop stops at (a checkpoint before a preemption). A hook may
  return STOP."""
  run: Callable
  every: int = 1
  at_stop: bool = False


@dataclasses.dataclass
class LoopStats:
  step: int  # the step the loop ended after
  stopped: bool  # a hook or `should_stop` ended it before `last`
  examples_per_s: float | None  # after the first (compiling) step
  data_wait_fraction: float | None  # time the devices may have idled waiting for inputs


def run(train_step, state, feed, *, first: int, last: int, hooks=(), should_stop=None,
        batch_size: int = 0):
  """Steps from `first` to `last` (or until a stop): `state, metrics = train_step(state,
  *feed(step))`, then the hooks whose time has come, in order. `should_stop(step)` is asked once
  after every step (a preemption or Ctrl-C). Returns (state, LoopStats)."""
  step, stopping = first, False
  waited_s, timed_from, end = 0.0, None, time.time()
  while step < last and not stopping:
    asked = time.time()
    inputs = feed(step)
    if timed_from is None:
      trace_train_step(train_step, state, *inputs)
    elif state.step.is_ready():  # the devices finished the last step before the inputs came
      waited_s += time.time() - asked  # (an upper bound on their idle time)
    state, step_metrics = train_step(state, *inputs)
    step += 1
    if timed_from is None:
      jax.block_until_ready(state)
      timed_from = (time.time(), step)
    stopping = bool(should_stop and should_stop(step))
    for hook in hooks:
      if itstime(step, hook.every, last) or (stopping and hook.at_stop):
        stopping = (hook.run(step, state, step_metrics) == STOP) or stopping
    end = time.time()
  elapsed = end - timed_from[0] if timed_from else 0.0
  timed = (step - timed_from[1]) * batch_size if timed_from else 0
  return state, LoopStats(
      step=step, stopped=step < last,
      examples_per_s=timed / elapsed if elapsed > 0 and batch_size else None,
      data_wait_fraction=waited_s / elapsed if elapsed > 0 else None)


class MetricsWindow:
  """The steps' metrics since the last flush, still on the device: read back in one transfer."""

  def __init__(self):
    self.pending = []  # (step, {loss, accuracy})

  def add(self, step, state, step_metrics):
    self.pending.append((step, step_metrics))

  def flush(self):
    """(steps, {name: host array over the steps}) or None when nothing is pending."""
    if not self.pending:
      return None
    window = jax.device_get(stack_steps([m for _, m in self.pending]))
    steps = [s for s, _ in self.pending]
    self.pending.clear()
    return steps, window


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')


@jax.jit
def stack_steps(step_metrics: list) -> dict:
  return jax.tree.map(lambda *values: jnp.stack(values), *step_metrics)


def window_summary(steps: list, window: dict, progress, config,
                   latest_checkpoint) -> dict:
  """A window of steps' metrics (host arrays, one value per step): checked for divergence,
  then averaged into {'train_loss', 'train_accuracy'}."""
  step_losses = [(s, float(loss)) for s, loss in zip(steps, window['loss'])]
  if progress.initial_loss is None:
    progress.initial_loss = step_losses[0][1]
  check_losses(step_losses, progress.initial_loss, config.divergence_factor,
               config.optimizer.learning_rate, latest_checkpoint)
  merged = TrainMetrics.single_from_model_output(**window).compute()
  return {f'train_{k}': float(v) for k, v in merged.items()}


def check_losses(pending, initial_loss: float, factor: float, learning_rate, last_checkpoint):
  """Raises DivergenceError at the first non-finite or exploded loss among (step, loss) pairs."""
  for step, loss in pending:
    if np.isfinite(loss) and loss <= factor * initial_loss:
      continue
    what = ('is not finite' if not np.isfinite(loss) else
            f'exceeds {factor:g} x the initial loss {initial_loss:.4g}')
    saved = (f'last good checkpoint: step {last_checkpoint}' if last_checkpoint is not None
             else 'no checkpoint was saved before it')
    raise DivergenceError(
        f'training diverged at step {step}: loss {loss:.4g} {what}. Likely cause: the learning '
        f'rate ({learning_rate:g}) is too high; try 3-10x lower, or add '
        f'--config.optimizer.grad_clip_norm=1.0. Otherwise look for bad inputs or labels. {saved}')


def trace_train_step(train_step, *args) -> None:
  """Traces the step without running it, so a model or loss that fails in train mode says so
  before any work (the trace is cached; the first real call does not repeat it)."""
  with user_code.phase('in train mode'):
    jax.eval_shape(train_step, *args)


@contextlib.contextmanager
def stop_for_preemption():
  """stop(step) -> whether to save and stop after `step`, asked after every step: SIGTERM (a
  preemption) or Ctrl-C (SIGINT) seen by this process; `stopped_by()` then names it. A second
  Ctrl-C stops at once (KeyboardInterrupt). In a multi-host job, JAX's preemption sync point
  instead: a SIGTERM that reaches any host (jax.distributed catches it) stops every host after
  the same step, so their collective checkpoint save meets."""
  main_thread = threading.current_thread() is threading.main_thread()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    def reached(step):
      if multihost_utils.reached_preemption_sync_point(step):
        _stopped_by['signal'] = _stopped_by['signal'] or 'SIGTERM'
        return True
      return False

    def interrupt(signum, frame):
      if _stopped_by['signal'] == 'SIGINT':
        raise KeyboardInterrupt  # the second Ctrl-C: now, without saving
      # Turned into JAX's preemption notice, which reaches every host: all stop after the same
      # step and save together (a host dying alone leaves its peers blocked in a collective).
      _stopped_by['signal'] = 'SIGINT'
      logging.warning('Ctrl-C: every host saves a checkpoint after the same step (Ctrl-C again '
                      'stops at once)')
      os.kill(os.getpid(), signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, interrupt) if main_thread else None
    try:
      yield reached
    finally:
      if previous is not None:
        signal.signal(signal.SIGINT, previous)
    return
  event = threading.Event()
  if not main_thread:
    yield lambda step: event.is_set()  # signal handlers can only be installed from the main thread
    return

  def stop(signum, frame):
    if event.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: now, without saving
    _stopped_by['signal'] = signal.Signals(signum).name
    event.set()
    if signum == signal.SIGINT:
      logging.warning('Ctrl-C: saving a checkpoint after this step (Ctrl-C again stops at once)')
  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield lambda step: event.is_set()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


_stopped_by = {'signal': None}


def interrupted() -> None:
  """A stage caught Ctrl-C (KeyboardInterrupt) outside a training loop and saved what it had:
  the run ends as one the loop stopped, with exit code 130."""
  _stopped_by['signal'] = 'SIGINT'
  logging.warning('Ctrl-C: saving what this stage has done so far (Ctrl-C again stops at once)')


def stopped_by() -> str | None:
  """'SIGTERM' or 'SIGINT' once a training loop of this process stopped for one, else None."""
  return _stopped_by['signal']
