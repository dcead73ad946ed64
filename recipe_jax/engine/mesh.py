"""The device mesh and placing arrays on it: one axis, 'data', over every device.

Works the same on one CPU, N virtual CPU devices, one GPU and a multi-host TPU pod: arrays are
built with `jax.make_array_from_callback`, so each host fills only its own devices.
"""
import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recipe_jax.errors import UserError

AXIS = 'data'


@functools.lru_cache(maxsize=1)
def make_mesh() -> Mesh:
  """Every device on one data axis, in the order jax.make_mesh picks for the interconnect; one
  object per process, so caches keyed on the mesh (compiled steps) find it again."""
  return jax.make_mesh((jax.device_count(),), (AXIS,), (jax.sharding.AxisType.Auto,))


def put_replicated(mesh: Mesh, tree):
  """Every device holds the whole value."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
      tree)


def put_sharded(mesh: Mesh, x: np.ndarray):
  """The leading axis is split over devices."""
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P(AXIS)), lambda i: x[i])


def one_at_a_time(step):
  """Each call completes before it returns. XLA:CPU runs all virtual devices' collectives on
  one shared thread pool; with many steps queued (async dispatch), 2 virtual devices on 2 cores
  deadlocked in the step's all-reduce after a few hundred steps, shard_map or not."""
  return lambda *args: jax.block_until_ready(step(*args))


def needs_one_at_a_time(mesh: Mesh) -> bool:
  return mesh.size > 1 and mesh.devices.flat[0].platform == 'cpu'


def require_divisible(num_devices: int, sizes: dict) -> None:
  """Batches split evenly over devices: a UserError naming the config key otherwise."""
  for name, value in sizes.items():
    if value % num_devices:
      raise UserError(f'{name}={value} must be divisible by the number of devices '
                      f'({num_devices})')
