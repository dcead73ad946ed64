"""Stochastic weight averaging (recipe step 6): continue a finished run at a constant learning
rate, average the weights of snapshots along the way, then recompute the BatchNorm statistics
for the averaged weights (the running averages belong to none of the snapshots).

The same continuation also keeps an exponential moving average of the weights (EMA row).
"""
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax import rng
from recipe_jax.model import optim
from recipe_jax.engine import training
from recipe_jax.engine import state as state_lib


def average_params(snapshots: list):
  """The element-wise mean of a list of parameter trees."""
  return jax.tree.map(lambda *leaves: np.mean(np.stack(leaves), 0), *snapshots)


def recompute_batch_stats(model, params, batch_stats, x: np.ndarray, batch_size: int,
                          seed: int = 0):
  """BatchNorm statistics of `params` over the examples x: the mean over batches of each
  batch's mean and variance, as BatchNorm computes them in train mode.

  It runs outside the sharded step, with the data axis bound (`state.on_one_device`). A
  BatchNorm update is new = m * old + (1 - m) * batch_value for an unknown momentum m, so the
  batch values are read from two updates that start from 0 and from 1: from 0 it is
  (1 - m) * batch_value, and the difference of the two is m.
  """
  if not batch_stats:
    return batch_stats
  dropout_key = rng.stream_key(seed, 'dropout', 0)

  @jax.jit
  def updated(stats, xb):
    _, new = state_lib.on_one_device(state_lib.apply_model)(
        model, {'params': params, 'batch_stats': stats}, xb, True, rngs={'dropout': dropout_key},
        mutable=['batch_stats'])
    return new['batch_stats']

  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  ones = jax.tree.map(jnp.ones_like, batch_stats)
  starts = range(0, len(x) - batch_size + 1, batch_size)  # whole batches only: one compile
  total = None
  for start in starts:
    from_zero = updated(zeros, x[start:start + batch_size])
    total = from_zero if total is None else jax.tree.map(jnp.add, total, from_zero)
  first = x[:batch_size]
  momentum = jax.tree.map(jnp.subtract, updated(ones, first), updated(zeros, first))
  return jax.device_get(jax.tree.map(lambda t, m: t / len(starts) / (1 - m), total, momentum))


def continue_and_average(exp, state, *, steps: int, every: int, learning_rate: float,
                         ema_decay: float):
  """(SWA state, EMA state): `steps` more steps of `exp`'s run from `state` at a constant
  `learning_rate` (a fresh optimizer state), averaging a snapshot every `every` steps; both
  with BatchNorm statistics recomputed on the training split."""
  config = exp.config
  opt_cfg = config.optimizer.copy_and_resolve_references()
  opt_cfg.unlock()
  opt_cfg.schedule, opt_cfg.warmup_steps, opt_cfg.learning_rate = 'constant', 0, learning_rate
  tx = optim.create(opt_cfg, steps)
  start = state.replace(opt_state=tx.init(state.params), ema_params=state.params)
  snapshots = []

  def collect(step, current):
    if step > 0:
      snapshots.append(current.params)

  final, _ = training.run_steps(exp, start, exp.dataset.x_train, exp.dataset.y_train,
                                num_steps=steps, seed=config.seed, batch_size=config.batch_size,
                                tx=tx, augmentation=exp.augmentation, every=every,
                                callback=collect, ema_decay=ema_decay)

  def with_fresh_statistics(params):
    stats = recompute_batch_stats(exp.model, params, final.batch_stats, exp.dataset.x_train,
                                  config.batch_size, config.seed)
    return final.replace(params=params, ema_params=params, batch_stats=stats)

  return (with_fresh_statistics(average_params(snapshots)),
          with_fresh_statistics(final.ema_params))
