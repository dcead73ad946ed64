"""The train state, the pure jitted train / eval steps, and the training loop.

Data parallelism: one mesh axis 'data' over every device. The steps run under `jax.shard_map`
with explicit `lax.pmean` (an auto-sharded GSPMD step deadlocked on 2 virtual CPU devices).
The training set lives on every device; each device gathers its slice of the step's batch.
"""
import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recipe_jax import console
from recipe_jax.data import datasets as data_lib, streaming
from recipe_jax.engine import checkpoints, multihost, rng, tensorboard_writer
from recipe_jax.model import augment, losses, models, user_code, warm_start
from recipe_jax.errors import DivergenceError, UserError
from recipe_jax.engine.mesh import AXIS, needs_one_at_a_time, one_at_a_time, put_replicated, put_sharded
from recipe_jax.engine.trees import params_sha256, replace_leaf


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # exponential moving average of params; {} when config.ema_decay is 0


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')


@jax.jit
def stack_steps(step_metrics: list) -> dict:
  return jax.tree.map(lambda *values: jnp.stack(values), *step_metrics)


def apply_model(model, variables, x, train, **kwargs):
  """model.apply, passing `train` only to models that take it. An error inside (raised while
  tracing, so this costs nothing per step) is tagged with the mode for the user's message."""
  if models.takes_train_flag(model):
    kwargs['train'] = train
  with user_code.phase('in train mode' if train else 'in eval mode'):
    return model.apply(variables, x, **kwargs)


@functools.lru_cache(maxsize=None)
def _jitted_init(model):
  """Compiled once per model: an init compiles for seconds (each random initializer is a
  threefry kernel), and stages such as sanity initialise the same model several times."""
  kwargs = {'train': False} if models.takes_train_flag(model) else {}
  return jax.jit(functools.partial(model.init, **kwargs))


@functools.lru_cache(maxsize=None)
def jitted_logits(model):
  """(variables, x) -> eval-mode logits, compiled once per model."""
  return jax.jit(lambda variables, x: apply_model(model, variables, x, False))


def init_state(model, tx, example_shape, seed: int, output_bias=None,
               ema: bool = False) -> TrainState:
  """Initial state from the 'init' key stream. `output_bias` (e.g. the log class priors, the
  recipe's "init well") replaces the bias of the layer that adds to the logits."""
  dummy = jnp.zeros((1, *example_shape), jnp.float32)
  with user_code.phase('at init'):
    variables = _jitted_init(model)(rng.stream_key(seed, 'init'), dummy)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  if output_bias is not None:
    logits = lambda p: jitted_logits(model)({'params': p, 'batch_stats': batch_stats}, dummy)
    with user_code.phase('in eval mode'):
      path = models.find_output_bias(logits, params, len(output_bias), models.logits_rtol(model))
    if path is None:
      logging.warning('init well: no bias adds directly to the logits (is there an activation '
                      'after the last layer?); the output bias keeps its default init')
    else:
      params = replace_leaf(params, path, jnp.asarray(output_bias))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params if ema else {})


def make_apply_fn(model, batch_stats, dropout_key):
  """(params, x, train) -> logits, for checks: train mode uses batch statistics (BatchNorm)
  and dropout with `dropout_key`, and discards the updated statistics."""
  def apply_fn(params, x, train):
    variables = {'params': params, 'batch_stats': batch_stats}
    if not train:
      return apply_model(model, variables, x, False)
    logits, _ = apply_model(model, variables, x, True, rngs={'dropout': dropout_key},
                            mutable=['batch_stats'])
    return logits
  return apply_fn


def batch_inputs(x_all, y_all, perm, step, batch_size: int, steps_per_epoch: int,
                 offset, size: int, seed=0, augmentation=None):
  """Rows [offset, offset + size) of step's global batch, augmented: exactly what the model sees.

  Args:
    x_all, y_all: the whole training split (on the device).
    perm: the epoch's order of training examples (`data.epoch_permutation`).
    step: the global step; its batch is slice `step % steps_per_epoch` of `perm`.
    batch_size: the global batch size; steps_per_epoch: batches per epoch.
    offset, size: which rows of the global batch (a device's share).
    seed, augmentation: the run's seed and `augment.Settings` (None: no augmentation).
  Returns:
    (x, y) of `size` rows; y are soft targets (size, num_classes) with mixup / cutmix.
  """
  start = (step % steps_per_epoch) * batch_size + offset
  idx = jax.lax.dynamic_slice_in_dim(perm, start, size)
  positions = offset + jnp.arange(size)
  x = augment.apply(augmentation, seed, step, positions, x_all[idx])
  if augment.mixes(augmentation):  # soft targets (B, num_classes)
    return augment.mix(augmentation, seed, step, positions, x, y_all[idx], x_all, y_all)
  return x, y_all[idx]


@functools.lru_cache(maxsize=None)  # a stage that trains several short runs compiles once
def make_train_step(model, tx, mesh: Mesh, batch_size: int, steps_per_epoch: int, seed: int,
                    loss_fn=losses.cross_entropy, augmentation=None, ema_decay: float = 0.0,
                    side_by_side: bool = False, accumulate_steps: int = 1,
                    streamed: bool = False):
  """The jitted train step: (state, x_train, y_train, epoch_perm) -> (state, {loss, accuracy}).
  With `side_by_side`, several seeds' runs in one program: (states, x_train, y_train,
  epoch_perms, seeds) -> (states, {loss, accuracy}), every leaf with a leading seed axis and
  `seed` unused (`recipe_jax.engine.side_by_side`). With `streamed`, (state, x_batch, y_batch): the
  step's batch itself, sharded over the devices (`dataset.pipeline=grain`).

  Args:
    model, tx: the Flax module and the optax optimizer.
    mesh: devices; each takes `batch_size / mesh.size` rows of the step's batch.
    batch_size, steps_per_epoch, seed: fix the batch order (see `batch_inputs`).
    loss_fn: (logits, labels) -> per-example losses; the step minimises their mean.
    augmentation: `augment.Settings` or None. ema_decay: > 0 keeps `state.ema_params`.
    accumulate_steps: > 1 splits each device's batch into this many micro-batches whose
      gradients are summed one after another (`accumulate_gradients`), for one update.
  Returns:
    A function that donates `state`; on a multi-device CPU mesh each call completes before
    it returns (`mesh.one_at_a_time`).
  """
  local_batch = batch_size // mesh.size

  def step_fn(state, x_all, y_all, perm=None, seed=seed):
    device = jax.lax.axis_index(AXIS)
    if streamed:  # x_all, y_all: this device's rows of the batch
      positions = device * local_batch + jnp.arange(local_batch)
      x, y = augment.apply(augmentation, seed, state.step, positions, x_all), y_all
    else:
      x, y = batch_inputs(x_all, y_all, perm, state.step, batch_size, steps_per_epoch,
                          device * local_batch, local_batch, seed, augmentation)
    dropout_key = jax.random.fold_in(rng.stream_key(seed, 'dropout', state.step), device)

    def loss_and_grads(x, y, batch_stats, dropout_key):
      def mean_loss(params):
        variables = {'params': params, 'batch_stats': batch_stats}
        logits, updates = apply_model(model, variables, x, True, rngs={'dropout': dropout_key},
                                      mutable=['batch_stats'])
        return loss_fn(logits, y).mean(), (logits, updates)
      return jax.value_and_grad(mean_loss, has_aux=True)(state.params)

    if accumulate_steps > 1:
      (loss, (logits, updates)), grads = accumulate_gradients(
          loss_and_grads, state.params, x, y, state.batch_stats, dropout_key, accumulate_steps)
    else:
      (loss, (logits, updates)), grads = loss_and_grads(x, y, state.batch_stats, dropout_key)
    grads = jax.lax.pmean(grads, AXIS)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    batch_stats = jax.lax.pmean(updates.get('batch_stats', state.batch_stats), AXIS)
    params = optax.apply_updates(state.params, param_updates)
    ema_params = state.ema_params
    if ema_decay:
      ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema_params=ema_params)
    labels = y if y.ndim == 1 else jnp.argmax(y, -1)  # soft targets (distillation): top class
    step_metrics = {'loss': jax.lax.pmean(loss, AXIS),
                    'accuracy': jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), AXIS)}
    return new_state, step_metrics

  body = jax.vmap(step_fn, in_axes=(0, None, None, 0, 0)) if side_by_side else step_fn
  in_specs = (P(), P(AXIS), P(AXIS)) if streamed else (P(),) * (5 if side_by_side else 4)
  sharded = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()),
                          check_vma=False)
  step = jax.jit(sharded, donate_argnums=(0,))
  if needs_one_at_a_time(mesh):
    return one_at_a_time(step)
  return step


def accumulate_gradients(loss_and_grads, params, x, y, batch_stats, dropout_key,
                         micro_batches: int):
  """The batch's mean loss and gradients from `micro_batches` equal slices, one at a time in a
  `lax.scan`, so only one micro-batch's activations are alive: a batch larger than fits in
  memory. Same result as the whole batch up to float summation order; BatchNorm statistics
  (and their running averages) go through the micro-batches in turn, and each micro-batch
  draws its own dropout mask."""
  split = lambda a: a.reshape(micro_batches, a.shape[0] // micro_batches, *a.shape[1:])

  def one_micro_batch(carry, micro):
    grads_sum, stats = carry
    index, micro_x, micro_y = micro
    (loss, (logits, updates)), grads = loss_and_grads(
        micro_x, micro_y, stats, jax.random.fold_in(dropout_key, index))
    return (jax.tree.map(jnp.add, grads_sum, grads), updates.get('batch_stats', stats)), (
        loss, logits)

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads_sum, stats), (losses, logits) = jax.lax.scan(
      one_micro_batch, (zeros, batch_stats), (jnp.arange(micro_batches), split(x), split(y)))
  grads = jax.tree.map(lambda g: g / micro_batches, grads_sum)
  return (losses.mean(), (logits.reshape(-1, logits.shape[-1]), {'batch_stats': stats})), grads


def pad_for_eval(x: np.ndarray, y: np.ndarray, eval_batch_size: int):
  """Pads to a whole number of eval batches; `mask` is 1 for real examples."""
  num_pad = -len(y) % eval_batch_size
  mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(num_pad, np.float32)])
  x = np.concatenate([x, np.zeros((num_pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros(num_pad, y.dtype)])
  return x, y, mask


@functools.lru_cache(maxsize=None)
def make_eval_fn(model, mesh: Mesh, batch_size: int, loss_fn=losses.cross_entropy,
                 use_ema: bool = False, side_by_side: bool = False):
  """(state, x, y, mask) -> {'loss', 'accuracy'} over a padded split sharded over devices:
  the one evaluation path of every stage, with the configured loss. With `side_by_side` the
  state has a leading seed axis, and so do the metrics."""
  local_batch = batch_size // mesh.size

  def eval_fn(state, x, y, mask):
    params = state.ema_params if use_ema else state.params
    variables = {'params': params, 'batch_stats': state.batch_stats}

    def one_batch(batch):
      bx, by, bmask = batch
      logits = apply_model(model, variables, bx, False)
      return jnp.stack([jnp.sum(loss_fn(logits, by) * bmask),
                        jnp.sum((jnp.argmax(logits, -1) == by) * bmask), jnp.sum(bmask)])

    chunks = jax.tree.map(lambda a: a.reshape(-1, local_batch, *a.shape[1:]), (x, y, mask))
    loss_sum, correct, count = jax.lax.psum(jnp.sum(jax.lax.map(one_batch, chunks), 0), AXIS)
    return {'loss': loss_sum / count, 'accuracy': correct / count}

  body = jax.vmap(eval_fn, in_axes=(0, None, None, None)) if side_by_side else eval_fn
  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                          out_specs=P(), check_vma=False)
  return jax.jit(sharded)


def eval_batch_size(num_examples: int, configured: int, num_devices: int) -> int:
  """Never pads a small split up to a large eval batch; stays divisible by the device count."""
  return min(configured, -(-max(num_examples, 1) // num_devices) * num_devices)


def compile_evaluator(model, mesh: Mesh, state, x, y, configured_batch: int, loss_fn,
                      use_ema: bool = False, side_by_side: bool = False):
  """The split placed on the devices (padded) and its evaluation compiled ahead of time, so a
  model that cannot be evaluated fails before training, not at the first eval.
  Returns evaluate(state) -> {'loss', 'accuracy'} as floats (side by side: numpy arrays, one
  value per seed)."""
  batch = eval_batch_size(len(y), configured_batch, mesh.size)
  arrays = [put_sharded(mesh, a) for a in pad_for_eval(x, y, batch)]
  with user_code.phase('in eval mode'):
    compiled = make_eval_fn(model, mesh, batch, loss_fn, use_ema,
                            side_by_side).lower(state, *arrays).compile()
  to_host = np.asarray if side_by_side else float
  return lambda state: {k: to_host(v) for k, v in compiled(state, *arrays).items()}


@contextlib.contextmanager
def stop_for_preemption():
  """stop(step) -> whether to save and stop after `step`, asked after every step: SIGTERM (a
  preemption) or Ctrl-C (SIGINT) seen by this process; `stopped_by()` then names it. A second
  Ctrl-C stops at once (KeyboardInterrupt). In a multi-host job, JAX's preemption sync point
  instead: a SIGTERM that reaches any host (jax.distributed catches it) stops every host after
  the same step, so their collective checkpoint save meets."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    def reached(step):
      if multihost_utils.reached_preemption_sync_point(step):
        _stopped_by['signal'] = 'SIGTERM'
        return True
      return False
    yield reached
    return
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
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


def stopped_by() -> str | None:
  """'SIGTERM' or 'SIGINT' once a training loop of this process stopped for one, else None."""
  return _stopped_by['signal']


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
    jax.eval_shape(getattr(train_step, '__wrapped__', train_step), *args)


def run_steps(model, tx, loss_fn, mesh: Mesh, state: TrainState, x_train, y_train, *,
              num_steps: int, batch_size: int, seed: int, augmentation=None, every: int = 0,
              callback=None, ema_decay: float = 0.0):
  """A short run for stages that train briefly (sanity checks, lr_find): the same batch order
  and jitted step as `train_and_evaluate`, without checkpoints or metric files.

  Args:
    state: the initial state, on the host.
    x_train, y_train: the examples to train on (host arrays).
    every, callback: `callback(step, state)` runs every `every` steps and after the last one.
    ema_decay: > 0 updates `state.ema_params` (which must be initialised) at every step.
  Returns:
    (final state, {'loss', 'accuracy'} per step as numpy arrays). The callback and the caller
    get the state on the host, so checks may run any jitted function on it.
  """
  state = put_replicated(mesh, state)
  per_epoch = data_lib.steps_per_epoch(len(y_train), batch_size)
  train_step = make_train_step(model, tx, mesh, batch_size, per_epoch, seed, loss_fn,
                               augmentation, ema_decay)
  x_all, y_all = put_replicated(mesh, (x_train, y_train))
  history, perm = [], None
  first = int(state.step)  # a continued state (squeeze: SWA) keeps its batch order
  for step in range(first, first + num_steps):
    if step == first or step % per_epoch == 0:
      perm = put_replicated(mesh, data_lib.epoch_permutation(seed, step // per_epoch,
                                                              len(y_train)))
      if step == first:
        trace_train_step(train_step, state, x_all, y_all, perm)
    if every and (step - first) % every == 0 and callback:
      callback(step - first, jax.device_get(state))
    state, step_metrics = train_step(state, x_all, y_all, perm)
    history.append(step_metrics)
  state = jax.device_get(state)
  if callback:
    callback(num_steps, state)
  history = jax.device_get(history)
  return state, {k: np.array([m[k] for m in history]) for k in ('loss', 'accuracy')}


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


def compile_splits(exp, state) -> dict:
  """Each split's evaluation, compiled once: {'val': evaluate, 'test': ..., 'train_split': ...}."""
  config, dataset = exp.config, exp.dataset
  named = {'val': (dataset.x_val, dataset.y_val), 'test': (dataset.x_test, dataset.y_test)}
  if config.eval_train_split:
    named['train_split'] = (dataset.x_train, dataset.y_train)
  return {name: compile_evaluator(exp.model, exp.mesh, state, x, y, config.eval_batch_size,
                                  exp.loss_fn, config.ema_decay > 0)
          for name, (x, y) in named.items()}


def split_metrics(evaluators: dict, state, split: str) -> dict:
  """{'eval_loss', 'eval_accuracy'} for 'val', {'test_loss', ...} for 'test', and so on."""
  prefix = 'eval' if split == 'val' else split
  return {f'{prefix}_{k}': v for k, v in evaluators[split](state).items()}


def train_and_evaluate(exp, workdir: str, on_eval=None) -> dict:
  """Trains `exp` (an `experiment.Experiment`), resuming from the latest checkpoint in workdir,
  and returns the run summary: setup, restore, the loop, the final evaluation.
  `on_eval(step, eval_metrics)` runs after every validation eval (a sweep reports to its pruner
  there; an exception it raises ends the run after the checkpoints are written)."""
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
    splits = compile_splits(exp, state)
    state, loop = _train_loop(exp, workdir, state, progress, splits, mngr, best_mngr, on_eval)
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
                on_eval=None):
  """Steps until the end, early stopping or SIGTERM; evaluates, checkpoints and reports on the
  way. Returns (state, facts about the loop for the summary)."""
  config, dataset = exp.config, exp.dataset
  per_epoch = data_lib.steps_per_epoch(len(dataset.y_train), config.batch_size)
  train_step = exp.train_step(per_epoch)
  writer = tensorboard_writer.ScalarWriter(workdir, just_logging=not multihost.is_leader())
  progress_line = console.ProgressLine(config.num_train_steps, int(state.step))
  step = int(state.step)
  pending = []  # (step, {loss, accuracy}) still on device, checked and logged in batches
  train_summary, eval_metrics = {}, {}
  feed = _streamed_feed(exp, step) if exp.streamed else _device_feed(exp, per_epoch)
  waited_s = 0.0  # time the devices may have idled waiting for inputs (see below)
  segment_start = time.time()
  timed_from = None  # (time, step) after the first step's compilation
  steps_per_sec = _Rate(step)
  profile_until = None
  stop_requested = False
  try:
    with stop_for_preemption() as preempted:
      while (step < config.num_train_steps and not stop_requested
             and not progress.stopped_early):
        asked = time.time()
        inputs = feed(step)
        if timed_from is None:
          trace_train_step(train_step, state, *inputs)
        elif state.step.is_ready():  # the devices finished the last step before the inputs came
          waited_s += time.time() - asked  # (an upper bound on their idle time)
        state, step_metrics = train_step(state, *inputs)
        step += 1
        pending.append((step, step_metrics))
        if timed_from is None:
          jax.block_until_ready(state)
          timed_from = (time.time(), step)
          profile_until = _start_profile(config, workdir, step)
        if step == profile_until:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          logging.info('profile of steps %d-%d in %s', step - config.profile_steps + 1, step,
                       os.path.join(workdir, 'profile'))
        stop_requested = preempted(step)  # asked once: it decides both the save and the exit
        is_last = step == config.num_train_steps
        eval_now = step % config.eval_every_steps == 0 or is_last
        save_now = step % config.checkpoint_every_steps == 0 or is_last or stop_requested
        if step % config.log_every_steps == 0 or eval_now or save_now:
          window_summary = _flush(pending, progress, config, mngr)
          if window_summary:
            train_summary = window_summary
            writer.write_scalars(step, train_summary)
        if eval_now:
          eval_metrics = split_metrics(splits, state, 'val')
          writer.write_scalars(step, {**eval_metrics, **steps_per_sec.since_last(step)})
          progress.history.append({'step': step, **train_summary, **eval_metrics})
          track_best(step, state, eval_metrics, progress, config, best_mngr)
          if on_eval:
            on_eval(step, eval_metrics)
        progress_line.report(step, train_summary, eval_metrics, force=eval_now)
        if save_now or progress.stopped_early:
          checkpoints.save(mngr, step, state, dataclasses.asdict(dataclasses.replace(
              progress, wall_s=progress.wall_s + time.time() - segment_start)))
          writer.flush()  # a remote workdir: the events and the log go up with each checkpoint
          console.sync_log()
      loop_end = time.time()
      if stop_requested:
        logging.warning('%s: saved a checkpoint at step %d; the same command resumes',
                        stopped_by(), step)
  finally:
    writer.flush()
    if profile_until is not None and step < profile_until:  # stopped early, or an error
      jax.profiler.stop_trace()
  elapsed = loop_end - timed_from[0] if timed_from else 0.0
  timed_steps = step - timed_from[1] if timed_from else 0
  return state, {
      'step': step, 'finished': step >= config.num_train_steps or progress.stopped_early,
      'train_summary': train_summary, 'eval_metrics': eval_metrics, 'writer': writer,
      'segment_start': segment_start,
      'examples_per_s': timed_steps * config.batch_size / elapsed if elapsed > 0 else None,
      'data_wait_fraction': waited_s / elapsed if elapsed > 0 else None}


def _device_feed(exp, per_epoch: int):
  """step -> the train step's inputs on the device path: the whole training split (placed
  once) and the epoch's order; the next epoch's order is requested one epoch ahead."""
  config, mesh, dataset = exp.config, exp.mesh, exp.dataset
  x_train, y_train = put_replicated(mesh, (dataset.x_train, dataset.y_train))
  num_train = len(dataset.y_train)
  current = {'epoch': None, 'perm': None, 'next': (None, None)}

  def inputs(step):
    epoch = step // per_epoch
    if epoch != current['epoch']:
      next_epoch, next_bits = current['next']
      bits = next_bits if next_epoch == epoch else data_lib.epoch_bits(config.seed, epoch,
                                                                        num_train)
      current['next'] = epoch + 1, data_lib.epoch_bits(config.seed, epoch + 1, num_train)
      current['perm'] = put_replicated(mesh, data_lib.permutation_from_bits(bits))
      current['epoch'] = epoch
    return x_train, y_train, current['perm']
  return inputs


def _streamed_feed(exp, step: int):
  """step -> the step's batch as sharded global arrays, read by grain (`streaming.batches`)
  from the step the run starts at: the batch order is a function of (seed, step) alone."""
  iterator = streaming.batches(exp.dataset, exp.config, step)
  sharding = NamedSharding(exp.mesh, P(AXIS))
  return lambda step: streaming.to_devices(sharding, next(iterator), exp.config.batch_size)


def _start_profile(config, workdir: str, step: int) -> int | None:
  """With config.profile_steps: starts a jax.profiler trace (after the first, compiling step)
  and returns the step at which it stops."""
  if config.profile_steps <= 0 or step + config.profile_steps > config.num_train_steps:
    if config.profile_steps > 0:
      logging.warning('profile_steps=%d: fewer steps than that are left; no profile',
                      config.profile_steps)
    return None
  jax.profiler.start_trace(os.path.join(workdir, 'profile'))
  return step + config.profile_steps


class _Rate:
  """Training steps per second between evals, for TensorBoard."""

  def __init__(self, step: int):
    self.step, self.time = step, time.time()

  def since_last(self, step: int) -> dict:
    now = time.time()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return {'steps_per_sec': rate}


def _flush(pending: list, progress: RunProgress, config, mngr) -> dict:
  """Checks the pending steps' losses for divergence and returns their mean metrics, with one
  device-to-host transfer for the whole window."""
  if not pending:
    return {}
  window = jax.device_get(stack_steps([m for _, m in pending]))
  steps = [s for s, _ in pending]
  pending.clear()
  return window_summary(steps, window, progress, config, mngr.latest_step())


def window_summary(steps: list, window: dict, progress: RunProgress, config,
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
    eval_metrics = split_metrics(splits, final_state, 'val')
    logging.info('restored the best checkpoint (step %d) for the final evaluation',
                 best_mngr.best_step())
  if best_mngr:
    best_mngr.close()
  if not eval_metrics:
    eval_metrics = split_metrics(splits, state, 'val')
  test_metrics = {}
  if loop['finished']:
    test_metrics = split_metrics(splits, final_state, 'test')
    if config.eval_train_split:  # the whole training split in eval mode: can the model fit it?
      test_metrics.update(split_metrics(splits, final_state, 'train_split'))
    writer.write_scalars(loop['step'], test_metrics)
  writer.close()
  return {'eval_metrics': eval_metrics, 'test_metrics': test_metrics,
          'final_state_step': int(final_state.step)}
