"""The train step: a plain function of one device's rows, then placed by the caller.

`train_step` is one update from the rows a device holds, with gradients and BatchNorm statistics
averaged over the mesh axis. `compile_train_step` gathers (or takes) the rows, applies `vmap` for
seeds side by side and `shard_map` for the devices, and jits. Data parallelism uses
`jax.shard_map` with explicit `lax.pmean`: an auto-sharded GSPMD step deadlocked on 2 virtual
CPU devices.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from recipe_jax.engine import compiled
from recipe_jax import rng
from recipe_jax.engine.batches import slice_start
from recipe_jax.engine.mesh import AXIS, needs_one_at_a_time, one_at_a_time
from recipe_jax.engine.state import apply_model
from recipe_jax.model import augment, losses


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Everything that fixes a compiled train step besides the mesh (hashable: compiled steps are
  cached on it, so a stage that trains several short runs compiles once)."""
  model: Any  # the Flax module
  tx: Any  # the optax optimizer
  batch_size: int  # the global batch
  steps_per_epoch: int
  loss_fn: Callable = losses.cross_entropy  # (logits, labels) -> per-example losses
  augmentation: Any = None  # augment.Settings or None
  ema_decay: float = 0.0  # > 0 keeps state.ema_params
  accumulate_steps: int = 1  # > 1: micro-batches in a lax.scan, one update


def train_step(settings: StepSettings, state, x, y, seed, device):
  """One update from this device's rows (x, y) of the step's batch, already augmented:
  (state, x, y, seed, device index) -> (state, {'loss', 'accuracy'})."""
  dropout_key = jax.random.fold_in(rng.stream_key(seed, 'dropout', state.step), device)

  def loss_and_grads(x, y, batch_stats, dropout_key):
    def mean_loss(params):
      variables = {'params': params, 'batch_stats': batch_stats}
      logits, updates = apply_model(settings.model, variables, x, True,
                                    rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      return settings.loss_fn(logits, y).mean(), (logits, updates)
    return jax.value_and_grad(mean_loss, has_aux=True)(state.params)

  if settings.accumulate_steps > 1:
    (loss, (logits, updates)), grads = accumulate_gradients(
        loss_and_grads, state.params, x, y, state.batch_stats, dropout_key,
        settings.accumulate_steps)
  else:
    (loss, (logits, updates)), grads = loss_and_grads(x, y, state.batch_stats, dropout_key)
  grads = jax.lax.pmean(grads, AXIS)
  param_updates, opt_state = settings.tx.update(grads, state.opt_state, state.params)
  batch_stats = jax.lax.pmean(updates.get('batch_stats', state.batch_stats), AXIS)
  params = optax.apply_updates(state.params, param_updates)
  ema_params, decay = state.ema_params, settings.ema_decay
  if decay:
    ema_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params)
  labels = y if y.ndim == 1 else jnp.argmax(y, -1)  # soft targets (distillation): top class
  step_metrics = {'loss': jax.lax.pmean(loss, AXIS),
                  'accuracy': jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), AXIS)}
  return new_state, step_metrics


def batch_inputs(x_all, y_all, perm, step, batch_size: int, steps_per_epoch: int,
                 offset, size: int, seed=0, augmentation=None):
  """Rows [offset, offset + size) of step's global batch, augmented: exactly what the model sees.

  Args:
    x_all, y_all: the whole training split (on the device).
    perm: the epoch's order of training examples (`batches.BatchOrder.epoch`).
    step: the global step; batch_size: the global batch size; steps_per_epoch: per epoch.
    offset, size: which rows of the global batch (a device's share).
    seed, augmentation: the run's seed and `augment.Settings` (None: no augmentation).
  Returns:
    (x, y) of `size` rows; y are soft targets (size, num_classes) with mixup / cutmix.
  """
  start = slice_start(step, steps_per_epoch, batch_size) + offset
  idx = jax.lax.dynamic_slice_in_dim(perm, start, size)
  positions = offset + jnp.arange(size)
  x = augment.apply(augmentation, seed, step, positions, x_all[idx])
  if augment.mixes(augmentation):  # soft targets (B, num_classes)
    return augment.mix(augmentation, seed, step, positions, x, y_all[idx], x_all, y_all)
  return x, y_all[idx]


@compiled.cached
def compile_train_step(settings: StepSettings, mesh: Mesh, side_by_side: bool = False,
                       streamed: bool = False):
  """The jitted step over the mesh, donating the state.

  The device feed (`batches.device_feed`): (state, x_train, y_train, epoch order, seed); each
  device gathers and augments its rows of the batch. `streamed` (`batches.grain_feed`):
  (state, x_batch, y_batch, seed), the batch already sharded over the devices. `side_by_side`:
  the state, the epoch orders and the seeds have a leading seed axis (`engine.side_by_side`).
  On a multi-device CPU mesh each call completes before it returns (`mesh.one_at_a_time`).
  """
  local_batch = settings.batch_size // mesh.size
  s = settings

  def gathered(state, x_all, y_all, perm, seed):
    device = jax.lax.axis_index(AXIS)
    x, y = batch_inputs(x_all, y_all, perm, state.step, s.batch_size, s.steps_per_epoch,
                        device * local_batch, local_batch, seed, s.augmentation)
    return train_step(s, state, x, y, seed, device)

  def given(state, x, y, seed):
    device = jax.lax.axis_index(AXIS)
    positions = device * local_batch + jnp.arange(local_batch)
    x = augment.apply(s.augmentation, seed, state.step, positions, x)
    return train_step(s, state, x, y, seed, device)

  body = given if streamed else gathered
  if side_by_side:
    body = jax.vmap(body, in_axes=(0, None, None, 0, 0))
  in_specs = (P(), P(AXIS), P(AXIS), P()) if streamed else (P(),) * 5
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
  (grads_sum, stats), (losses_, logits) = jax.lax.scan(
      one_micro_batch, (zeros, batch_stats), (jnp.arange(micro_batches), split(x), split(y)))
  grads = jax.tree.map(lambda g: g / micro_batches, grads_sum)
  return (losses_.mean(), (logits.reshape(-1, logits.shape[-1]), {'batch_stats': stats})), grads
