"""The batch order, and the feeds that give a train step its inputs.

Epoch `e` is the stable argsort of `jax.random.bits` from the run's 'data_order' stream folded
with `e`; step `s` takes slice `s % steps_per_epoch` of epoch `s // steps_per_epoch`, and the
remainder of an epoch is skipped. A pure function of (seed, step), so a resumed run replays
exactly, and the device feed and grain read the same rows.
"""
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from recipe_jax import rng
from recipe_jax.engine.mesh import AXIS, put_replicated
from recipe_jax.errors import UserError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if batch_size > num_examples:
    raise UserError(f'batch_size={batch_size} is larger than the training split '
                    f'({num_examples} examples); use a batch_size <= {num_examples}')
  return num_examples // batch_size  # the remainder of each epoch's permutation is skipped


def slice_start(step, per_epoch: int, batch_size: int):
  """Where step's batch starts in its epoch's order: host ints or traced steps alike."""
  return (step % per_epoch) * batch_size


class BatchOrder:
  """One run's order of training examples: `epoch(e)` (the next epoch's random bits are asked
  for one epoch ahead, so reading them never waits for the steps queued before them) and
  `indices(step)`. Safe to share between grain's reader threads."""

  def __init__(self, seed: int, num_examples: int, batch_size: int):
    self.seed, self.num_examples, self.batch_size = int(seed), num_examples, batch_size
    self.steps_per_epoch = steps_per_epoch(num_examples, batch_size)
    self._bits, self._orders = {}, {}  # epoch -> bits asked ahead; epoch -> permutation
    self._lock = threading.Lock()

  def epoch(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._orders:
        bits = self._bits.pop(epoch, None)
        if bits is None:
          bits = epoch_bits(self.seed, epoch, self.num_examples)
        self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
        self._orders[epoch] = permutation_from_bits(bits)
        if epoch + 1 not in self._bits:
          self._bits = {epoch + 1: epoch_bits(self.seed, epoch + 1, self.num_examples)}
      return self._orders[epoch]

  def indices(self, step: int, offset: int = 0, size: int | None = None) -> np.ndarray:
    """Rows [offset, offset + size) of step's batch (default: the whole batch)."""
    start = slice_start(step, self.steps_per_epoch, self.batch_size) + offset
    size = self.batch_size - offset if size is None else size
    return self.epoch(step // self.steps_per_epoch)[start:start + size]


def epoch_bits(seed: int, epoch: int, num_examples: int):
  """The epoch's random bits, dispatched on the host CPU device and not waited for."""
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    return _epoch_bits(seed, epoch, num_examples)


def permutation_from_bits(bits) -> np.ndarray:
  """Ranks the bits with numpy's stable sort (~0.1 ms, where a sort on XLA's CPU backend in the
  middle of training cost ~2.7 ms per epoch). Ties (equal 32-bit draws) are rare and break by
  index."""
  return np.argsort(np.asarray(bits), kind='stable').astype(np.int32)


@functools.partial(jax.jit, static_argnums=(2,))
def _epoch_bits(seed, epoch, num_examples: int):
  return jax.random.bits(rng.stream_key(seed, 'data_order', epoch), (num_examples,), jnp.uint32)


def device_feed(mesh, x, y, orders):
  """step -> (x, y, epoch order, seed) for a step that gathers its batch on the devices: the
  whole training split placed on every device once, and the epoch's order. `orders` is one
  BatchOrder, or a list of them for seeds side by side (orders and seeds then stacked)."""
  side_by_side = isinstance(orders, (list, tuple))
  x_all, y_all = put_replicated(mesh, (x, y))
  seeds = np.array([o.seed for o in orders] if side_by_side else orders.seed, np.int32)
  seeds = put_replicated(mesh, seeds)
  per_epoch = (orders[0] if side_by_side else orders).steps_per_epoch
  current = {'epoch': None, 'order': None}

  def inputs(step):
    epoch = step // per_epoch
    if epoch != current['epoch']:
      order = (np.stack([o.epoch(epoch) for o in orders]) if side_by_side
               else orders.epoch(epoch))
      current.update(epoch=epoch, order=put_replicated(mesh, order))
    return x_all, y_all, current['order'], seeds
  return inputs


def grain_feed(mesh, dataset, config, first_step: int, order: BatchOrder):
  """step -> (x, y, seed): the step's batch read by grain from storage as global arrays sharded
  over the devices, from `first_step` on (the batch is a function of the step, so nothing of
  the reader needs saving). Each process reads only its rows of the batch."""
  import grain  # here, not at the top: the device path does not pay for its import
  shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  local = config.batch_size // shard.shard_count

  def read(step):
    rows = order.indices(step, shard.shard_index * local, local)
    return dataset.x_train[rows], dataset.y_train[rows]

  options = grain.ReadOptions(num_threads=config.dataset.grain_threads,
                              prefetch_buffer_size=config.dataset.prefetch_batches)
  iterator = iter(grain.MapDataset.range(config.num_train_steps).map(read)
                  .to_iter_dataset(options))
  iterator.set_state({'next_index': first_step})
  sharding = NamedSharding(mesh, P(AXIS))
  seed = put_replicated(mesh, np.int32(order.seed))
  return lambda step: (*to_devices(sharding, next(iterator), config.batch_size), seed)


def to_devices(sharding, batch, batch_size: int):
  """This process's rows of a batch as one global array per leaf."""
  if jax.process_count() == 1:  # the rows are the whole batch: one transfer (~25 us less)
    return jax.device_put(batch, sharding)
  return tuple(jax.make_array_from_process_local_data(sharding, leaf,
                                                      (batch_size, *leaf.shape[1:]))
               for leaf in batch)
