"""Users' Flax NNX models, run by the pipeline as Linen modules through flax's bridge.

A factory named by `model.name=pkg.mod:Factory` that takes `rngs` is an NNX one: it is called as
`Factory(num_classes, rngs=nnx.Rngs(...))` and returns an `nnx.Module` called as `model(x)`.
`nnx.bridge.ToLinen` rebuilds it inside each `init` / `apply` (under jit only the trace pays for
that) and keeps its `nnx.Param`s in 'params' and `nnx.BatchStat`s in 'batch_stats', so every
stage, checkpoint, warm start and check treats it like any Linen model. Train and eval mode are
switched the NNX way (`model.train()` / `model.eval()`, which set Dropout's and BatchNorm's
flags); Dropout draws from the pipeline's 'dropout' key stream.
"""
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from recipe_jax.model import layers


def takes(factory, argument: str) -> bool:
  """Whether a factory (a function, or a class through its __init__: NNX's metaclass hides the
  class's own signature) takes `argument`."""
  function = factory.__init__ if inspect.isclass(factory) else factory
  try:
    return argument in inspect.signature(function).parameters
  except (TypeError, ValueError):
    return False


def is_nnx_factory(factory) -> bool:
  """An nnx.Module class, or a function that takes the random state NNX modules are built
  with (`rngs`)."""
  from flax import nnx
  if inspect.isclass(factory) and issubclass(factory, nnx.Module):
    return True
  return not inspect.isclass(factory) and takes(factory, 'rngs')


def _build(factory, num_classes: int, extra: dict, *, rngs):
  """The user's module from the call's rng streams. `init` brings only 'params' and NNX's
  Dropout wants a stream at construction, so a 'default' one is added from 'params'."""
  from flax import nnx
  streams = {name: stream() for name, stream in rngs.items()}
  streams.setdefault('default', streams.get('params', 0))
  return factory(num_classes, rngs=nnx.Rngs(**streams), **extra)


class NNXModel(nn.Module):
  """A Linen module around a user's NNX factory, called as `model(x, train=bool)`."""
  factory: Callable
  num_classes: int
  dtype: Any = jnp.float32  # passed to the factory when it is not float32
  options: tuple = ()  # ((key, value), ...): the model.* keys set that the factory takes

  @nn.compact
  def __call__(self, x, train: bool = False):
    from flax import nnx
    extra = {} if self.dtype == jnp.float32 else {'dtype': self.dtype}
    extra.update(self.options)

    records = {}

    def forward(module, x):
      module.train() if train else module.eval()
      if not layers.is_recording():
        return module(x)
      found, out = layers.record_nnx_layers(module, lambda: module(x),
                                            '/'.join((*map(str, self.scope.path), 'nnx')))
      records.update(found)
      return out
    build = functools.partial(_build, self.factory, self.num_classes, extra)
    logits = nnx.bridge.ToLinen(build, name='nnx')(x, nnx_method=forward)
    if records:  # the layers' inputs and outputs, for the probes (`model.layers`)
      self.sow(layers.RECORDED, 'nnx_layers', records)
    return logits.astype(jnp.float32)
