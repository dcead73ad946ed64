"""The train state: what a step updates and a checkpoint holds; its initialisation, and the
model applied in train or eval mode."""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from absl import logging

from recipe_jax.engine import compiled
from recipe_jax import rng
from recipe_jax.engine.mesh import AXIS
from recipe_jax.trees import replace_leaf
from recipe_jax.model import models, user_code


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # exponential moving average of params; {} when config.ema_decay is 0


def apply_model(model, variables, x, train, **kwargs):
  """model.apply, passing `train` only to models that take it. An error inside (raised while
  tracing, so this costs nothing per step) is tagged with the mode for the user's message."""
  if models.takes_train_flag(model):
    kwargs['train'] = train
  with user_code.phase('in train mode' if train else 'in eval mode'):
    return model.apply(variables, x, **kwargs)


# XLA's backend optimisations make an init compile 5x slower (ResNet-18 on CPU: 13 s against
# 2.6 s) and the init runs once; the draws may differ from an optimised build in the last bit.
UNOPTIMISED = {'xla_backend_optimization_level': 0}


@compiled.cached
def _jitted_init(model):
  """Compiled once per model, unoptimised (`UNOPTIMISED`): each random initializer is a
  threefry kernel, and stages such as sanity initialise the same model several times."""
  kwargs = {'train': False} if models.takes_train_flag(model) else {}
  return jax.jit(functools.partial(model.init, **kwargs), compiler_options=UNOPTIMISED)


@compiled.cached
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
                    opt_state=_jitted_tx_init(tx)(params), ema_params=params if ema else {})


@compiled.cached
def _jitted_tx_init(tx):
  """tx.init as one program: eagerly, each zeros_like of each parameter shape compiles alone."""
  return jax.jit(tx.init)


def on_one_device(fn):
  """`fn` callable outside the sharded step: the mesh's data axis is bound (with size 1), so a
  BatchNorm that averages its statistics over the devices (`axis_name='data'`, as the built-in
  ResNets do) averages them over the one batch it is given. Under training's shard_map the
  same statistics are the mean over the devices' equal shares of the batch: the same numbers."""
  def bound(*args, **kwargs):
    out = jax.vmap(lambda: fn(*args, **kwargs), axis_name=AXIS, axis_size=1)()
    return jax.tree.map(lambda leaf: leaf[0], out)
  return bound


def make_apply_fn(model, batch_stats, dropout_key):
  """(params, x, train) -> logits, for checks, outside the sharded step (`on_one_device`):
  train mode uses batch statistics (BatchNorm) and dropout with `dropout_key`, and discards the
  updated statistics."""
  def apply_fn(params, x, train):
    variables = {'params': params, 'batch_stats': batch_stats}
    if not train:
      return apply_model(model, variables, x, False)
    logits, _ = on_one_device(apply_model)(model, variables, x, True,
                                           rngs={'dropout': dropout_key},
                                           mutable=['batch_stats'])
    return logits
  return apply_fn
