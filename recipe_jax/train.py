"""The train state, the pure jitted train / eval steps, and the training loop.

Data parallelism: one mesh axis 'data' over every device. The steps run under `jax.shard_map`
with explicit `lax.pmean` (an auto-sharded GSPMD step deadlocked on 2 virtual CPU devices).
The training set lives on every device; each device gathers its slice of the step's batch.
"""
import contextlib
import functools
import hashlib
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
from clu import metric_writers, metrics, periodic_actions
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recipe_jax import augment, checkpoints, data as data_lib, losses, models, optim, rng
from recipe_jax.errors import DivergenceError, UserError

AXIS = 'data'


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


def params_sha256(params) -> str:
  """Hash of every parameter leaf's bytes in tree order: equal hashes mean bit-identical params."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), (AXIS,))


def put_replicated(mesh: Mesh, tree):
  """Every device holds the whole value; works on one host and across hosts alike."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
      tree)


def put_sharded(mesh: Mesh, x: np.ndarray):
  """The leading axis is split over devices."""
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P(AXIS)), lambda i: x[i])


def apply_model(model, variables, x, train, **kwargs):
  """model.apply, passing `train` only to models that take it."""
  if models.takes_train_flag(model):
    kwargs['train'] = train
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
  variables = _jitted_init(model)(rng.stream_key(seed, 'init'), dummy)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  if output_bias is not None:
    logits = lambda p: jitted_logits(model)({'params': p, 'batch_stats': batch_stats}, dummy)
    path = models.find_output_bias(logits, params, len(output_bias))
    if path is None:
      logging.warning('init well: no bias adds directly to the logits (is there an activation '
                      'after the last layer?); the output bias keeps its default init')
    else:
      params = models.replace_leaf(params, path, jnp.asarray(output_bias))
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
  """Rows [offset, offset + size) of step's batch, augmented: exactly what the model sees."""
  start = (step % steps_per_epoch) * batch_size + offset
  idx = jax.lax.dynamic_slice_in_dim(perm, start, size)
  x = augment.apply(augmentation, seed, step, offset + jnp.arange(size), x_all[idx])
  return x, y_all[idx]


@functools.lru_cache(maxsize=None)  # a stage that trains several short runs compiles once
def make_train_step(model, tx, mesh: Mesh, batch_size: int, steps_per_epoch: int, seed: int,
                    loss_fn=losses.cross_entropy, augmentation=None, ema_decay: float = 0.0):
  """(state, x_train, y_train, epoch_perm) -> (state, {loss, accuracy}), jitted; donates state."""
  local_batch = batch_size // mesh.size

  def step_fn(state, x_all, y_all, perm):
    device = jax.lax.axis_index(AXIS)
    x, y = batch_inputs(x_all, y_all, perm, state.step, batch_size, steps_per_epoch,
                        device * local_batch, local_batch, seed, augmentation)
    dropout_key = jax.random.fold_in(rng.stream_key(seed, 'dropout', state.step), device)

    def mean_loss(params):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      logits, updates = apply_model(model, variables, x, True, rngs={'dropout': dropout_key},
                               mutable=['batch_stats'])
      return loss_fn(logits, y).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params)
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
    step_metrics = {'loss': jax.lax.pmean(loss, AXIS),
                    'accuracy': jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == y), AXIS)}
    return new_state, step_metrics

  sharded = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(), P(), P()),
                          out_specs=(P(), P()), check_vma=False)
  step = jax.jit(sharded, donate_argnums=(0,))
  if mesh.size > 1 and mesh.devices.flat[0].platform == 'cpu':
    return one_at_a_time(step)
  return step


def one_at_a_time(step):
  """Each call completes before it returns. XLA:CPU runs all virtual devices' collectives on
  one shared thread pool; with many steps queued (async dispatch), 2 virtual devices on 2 cores
  deadlocked in the step's all-reduce after a few hundred steps, shard_map or not."""
  return lambda *args: jax.block_until_ready(step(*args))


def pad_for_eval(x: np.ndarray, y: np.ndarray, eval_batch_size: int):
  """Pads to a whole number of eval batches; `mask` is 1 for real examples."""
  num_pad = -len(y) % eval_batch_size
  mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(num_pad, np.float32)])
  x = np.concatenate([x, np.zeros((num_pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros(num_pad, y.dtype)])
  return x, y, mask


def make_eval_fn(model, mesh: Mesh, eval_batch_size: int, loss_fn=losses.cross_entropy,
                 use_ema: bool = False):
  """(state, x, y, mask) -> {'loss', 'accuracy'} over a padded split sharded over devices."""
  local_batch = eval_batch_size // mesh.size

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

  sharded = jax.shard_map(eval_fn, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                          out_specs=P(), check_vma=False)
  return jax.jit(sharded)


def run_eval(evaluate, state, splits, split: str) -> dict:
  prefix = 'eval' if split == 'val' else split
  return {f'{prefix}_{k}': float(v) for k, v in evaluate[split](state, *splits[split]).items()}


@contextlib.contextmanager
def sigterm_requested():
  """An Event set by SIGTERM (preemption); the loop checks it after every step."""
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield event  # signal handlers can only be installed from the main thread
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
  try:
    yield event
  finally:
    signal.signal(signal.SIGTERM, previous)


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


def require_divisible(num_devices: int, sizes: dict) -> None:
  """Batches split evenly over devices: a UserError naming the config key otherwise."""
  for name, value in sizes.items():
    if value % num_devices:
      raise UserError(f'{name}={value} must be divisible by the number of devices '
                      f'({num_devices})')


def run_steps(model, tx, loss_fn, x_train, y_train, *, num_steps: int, batch_size: int,
              seed: int, output_bias=None, augmentation=None, every: int = 0, callback=None):
  """A short run from a fresh init, for stages that train briefly (sanity checks): the same
  init, batch order and jitted step as `train_and_evaluate`, without checkpoints or metric
  files. `callback(step, state)` runs every `every` steps and after the last one.
  Returns (final state, {'loss', 'accuracy'} per step as numpy arrays).
  The callback and the caller get the state on the host, so checks may run any jitted
  function on it without touching the replicated arrays."""
  mesh = make_mesh()
  require_divisible(mesh.size, {'batch_size': batch_size})
  state = put_replicated(mesh, init_state(model, tx, x_train.shape[1:], seed, output_bias))
  per_epoch = data_lib.steps_per_epoch(len(y_train), batch_size)
  train_step = make_train_step(model, tx, mesh, batch_size, per_epoch, seed, loss_fn,
                               augmentation)
  x_all, y_all = put_replicated(mesh, (x_train, y_train))
  history = []
  for step in range(num_steps):
    if step % per_epoch == 0:
      perm = put_replicated(mesh, data_lib.epoch_permutation(seed, step // per_epoch,
                                                              len(y_train)))
    if every and step % every == 0 and callback:
      callback(step, jax.device_get(state))
    state, step_metrics = train_step(state, x_all, y_all, perm)
    history.append(step_metrics)
  state = jax.device_get(state)
  if callback:
    callback(num_steps, state)
  history = jax.device_get(history)
  return state, {k: np.array([m[k] for m in history]) for k in ('loss', 'accuracy')}


def output_bias(config, dataset):
  """The log class priors when `model.log_prior_output_bias` is on, else None."""
  if not config.model.log_prior_output_bias:
    return None
  return models.class_log_prior(dataset.y_train, dataset.num_classes)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in workdir) and returns the run summary."""
  dataset = data_lib.load(config.dataset)
  mesh = make_mesh()
  require_divisible(mesh.size, {'batch_size': config.batch_size,
                                'eval_batch_size': config.eval_batch_size})
  if len(dataset.y_val) == 0:
    raise UserError(f'dataset.val_fraction={config.dataset.val_fraction} leaves no validation '
                    'examples; training needs some (e.g. 0.05) to report eval metrics')
  num_train = len(dataset.y_train)
  per_epoch = data_lib.steps_per_epoch(num_train, config.batch_size)
  model = models.create(config.model, dataset.num_classes, bn_axis_name=AXIS)
  tx = optim.create(config.optimizer, config.num_train_steps)
  loss_fn = losses.create(config.loss)  # evaluation: the plain loss, without label smoothing
  use_ema = config.ema_decay > 0
  state = put_replicated(mesh, init_state(model, tx, dataset.x_train.shape[1:], config.seed,
                                          output_bias(config, dataset), ema=use_ema))
  early_stopping = config.early_stopping.patience > 0

  mngr = checkpoints.manager(os.path.join(workdir, 'checkpoints'), config.max_to_keep)
  restored, meta = checkpoints.restore_latest(mngr, state)
  if restored is not None:
    state = restored
    logging.info('resumed from the checkpoint at step %d', int(state.step))
  meta = {'initial_loss': None, 'best_eval_accuracy': 0.0, 'best_step': 0, 'wall_s': 0.0,
          'evals_without_improvement': 0, 'stopped_early': False, 'history': [], **(meta or {})}
  best_mngr = None
  if early_stopping:  # the best validation checkpoint, kept apart from the latest ones
    best_mngr = checkpoints.manager(os.path.join(workdir, 'checkpoints_best'), 1,
                                    best_metric='eval_accuracy')
  resumed_from = int(state.step) if restored is not None else None

  x_train, y_train = put_replicated(mesh, (dataset.x_train, dataset.y_train))
  splits, evaluate = {}, {}
  named_splits = [('val', dataset.x_val, dataset.y_val), ('test', dataset.x_test, dataset.y_test)]
  if config.eval_train_split:
    named_splits.append(('train_split', dataset.x_train, dataset.y_train))
  for name, x, y in named_splits:
    # Never pad a small split up to a large eval batch; keep it divisible by the device count.
    batch = min(config.eval_batch_size, -(-max(len(y), 1) // mesh.size) * mesh.size)
    splits[name] = [put_sharded(mesh, a) for a in pad_for_eval(x, y, batch)]
    # Compiled now, so a model that cannot be evaluated fails before training, not at step 500.
    evaluate[name] = make_eval_fn(model, mesh, batch, loss_fn, use_ema).lower(
        state, *splits[name]).compile()
  train_step = make_train_step(model, tx, mesh, config.batch_size, per_epoch, config.seed,
                               losses.create(config.loss, config.label_smoothing),
                               augment.settings(config.augment), config.ema_decay)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps,
                                             writer=writer, every_secs=30)
  step = int(state.step)
  pending = []  # (step, {loss, accuracy}) still on device, checked and logged in batches
  train_summary, eval_metrics = {}, {}
  perm_epoch, perm = None, None
  segment_start = time.time()
  timed_from = None  # (time, step) after the first step's compilation

  def flush_pending():
    nonlocal train_summary
    if not pending:
      return
    window = jax.device_get(stack_steps([m for _, m in pending]))  # one transfer, not one per step
    losses = [(s, float(loss)) for (s, _), loss in zip(pending, window['loss'])]
    if meta['initial_loss'] is None:
      meta['initial_loss'] = losses[0][1]
    check_losses(losses, meta['initial_loss'], config.divergence_factor,
                 config.optimizer.learning_rate, mngr.latest_step())
    merged = TrainMetrics.single_from_model_output(**window).compute()
    train_summary = {f'train_{k}': float(v) for k, v in merged.items()}
    writer.write_scalars(step, train_summary)
    pending.clear()

  def save_checkpoint():
    wall_s = meta['wall_s'] + time.time() - segment_start
    checkpoints.save(mngr, step, state, {**meta, 'wall_s': wall_s})

  try:
    with sigterm_requested() as preempted:
      stop_requested = False
      while step < config.num_train_steps and not stop_requested and not meta['stopped_early']:
        epoch = step // per_epoch
        if epoch != perm_epoch:
          perm = put_replicated(mesh, data_lib.epoch_permutation(config.seed, epoch, num_train))
          perm_epoch = epoch
        state, step_metrics = train_step(state, x_train, y_train, perm)
        step += 1
        pending.append((step, step_metrics))
        if timed_from is None:
          jax.block_until_ready(state)
          timed_from = (time.time(), step)
        stop_requested = preempted.is_set()  # read once: it decides both the save and the exit
        is_last = step == config.num_train_steps
        eval_now = step % config.eval_every_steps == 0 or is_last
        save_now = step % config.checkpoint_every_steps == 0 or is_last or stop_requested
        if step % config.log_every_steps == 0 or eval_now or save_now:
          flush_pending()
          progress(step)  # time-based (every_secs), so calling it only here is enough
        if eval_now:
          eval_metrics = run_eval(evaluate, state, splits, 'val')
          writer.write_scalars(step, eval_metrics)
          meta['history'].append({'step': step, **train_summary, **eval_metrics})
          if eval_metrics['eval_accuracy'] > (meta['best_eval_accuracy'] +
                                              config.early_stopping.min_delta):
            meta['best_eval_accuracy'], meta['best_step'] = eval_metrics['eval_accuracy'], step
            meta['evals_without_improvement'] = 0
            if best_mngr and step not in best_mngr.all_steps():  # a resumed run replays evals
              checkpoints.save(best_mngr, step, state, {'step': step}, metrics=eval_metrics)
          else:
            meta['evals_without_improvement'] += 1
          patience = config.early_stopping.patience
          if early_stopping and meta['evals_without_improvement'] >= patience:
            meta['stopped_early'] = True
            logging.info('early stopping at step %d: no eval_accuracy gain above %g for %d evals;'
                         ' best %.4f at step %d', step, config.early_stopping.min_delta,
                         config.early_stopping.patience, meta['best_eval_accuracy'],
                         meta['best_step'])
        if save_now or meta['stopped_early']:
          save_checkpoint()
      loop_end = time.time()
      if stop_requested:
        logging.warning('SIGTERM: saved a checkpoint at step %d; exiting', step)
  finally:
    for m in filter(None, (mngr, best_mngr)):
      m.wait_until_finished()
    mngr.close()
    writer.flush()

  finished = step >= config.num_train_steps or meta['stopped_early']
  final_state = state
  if finished and best_mngr and best_mngr.best_step() is not None:
    final_state, _ = checkpoints.restore_latest(best_mngr, state)  # max_to_keep=1: the best
    eval_metrics = run_eval(evaluate, final_state, splits, 'val')
    logging.info('restored the best checkpoint (step %d) for the final evaluation',
                 best_mngr.best_step())
  if best_mngr:
    best_mngr.close()
  if not eval_metrics:
    eval_metrics = run_eval(evaluate, state, splits, 'val')
  test_metrics = {}
  if finished:  # the test split is looked at once, at the end, never for selection
    test_metrics = run_eval(evaluate, final_state, splits, 'test')
    if config.eval_train_split:  # the whole training split in eval mode: can the model fit it?
      test_metrics.update(run_eval(evaluate, final_state, splits, 'train_split'))
    writer.write_scalars(step, test_metrics)
    writer.flush()
  elapsed = loop_end - timed_from[0] if timed_from else 0.0
  timed_steps = step - timed_from[1] if timed_from else 0
  return {
      'stage': config.stage,
      'step': step,
      'finished': finished,
      'preempted': not finished,
      'resumed_from_step': resumed_from,
      'train_loss': train_summary.get('train_loss'),
      'train_accuracy': train_summary.get('train_accuracy'),
      **eval_metrics,
      'best_eval_accuracy': meta['best_eval_accuracy'],
      'best_eval_step': meta['best_step'],
      'stopped_early': meta['stopped_early'],
      'final_state_step': int(final_state.step),  # the best step when early stopping restored it
      **test_metrics,
      'params_sha256': params_sha256(state.params),
      'wall_s': meta['wall_s'] + time.time() - segment_start,
      'examples_per_s': timed_steps * config.batch_size / elapsed if elapsed > 0 else None,
      'num_devices': mesh.size,
      'history': meta['history'],  # train and validation metrics at every eval
  }
