"""Users' Flax NNX models, loaded by tests as 'helpers.nnx_models:Name'."""
import flax.linen as linen
import jax.numpy as jnp
from flax import nnx


class CNN(nnx.Module):
  """A 1-D CNN with BatchNorm and Dropout over any input read as a sequence (MNIST-1D's 40
  values, digits' 64 pixels), pooled over its length."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(5,), strides=(2,), dtype=dtype, rngs=rngs)
    self.norm = nnx.BatchNorm(32, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(32, 32, kernel_size=(3,), strides=(2,), dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.head = nnx.Linear(2 * 32, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.norm(self.conv1(x.reshape(x.shape[0], -1, 1))))
    return self.head(self.dropout(self.pool(nnx.relu(self.conv2(h)))))

  def pool(self, h):
    return jnp.concatenate([h.mean(axis=1), h.max(axis=1)], axis=-1)


class DigitsCNN(nnx.Module):
  """For 8x8 single-channel images (digits): two 3x3 convolutions with BatchNorm, Dropout, and
  a dense head over the flattened 8x8x32 features."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), dtype=dtype, rngs=rngs)
    self.norm = nnx.BatchNorm(32, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(32, 32, kernel_size=(3, 3), dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 32, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.norm(self.conv1(x)))
    h = nnx.relu(self.conv2(h))
    return self.head(self.dropout(h.reshape(h.shape[0], -1)))


class BatchStatsInEval(CNN):
  """The planted bug: BatchNorm told to use the batch's statistics whatever the mode, so eval
  predictions depend on the other examples of the batch."""

  def __call__(self, x):
    h = self.norm(self.conv1(x.reshape(x.shape[0], -1, 1)), use_running_average=False)
    return self.head(self.dropout(self.pool(nnx.relu(self.conv2(nnx.relu(h))))))


def LinenCNN(num_classes: int):  # noqa: N802  a factory, named like the module it builds
  """`CNN` written in Linen, layer for layer: the yardstick of scripts/bench_nnx.py."""
  return _LinenCNN(num_classes=num_classes)


class _LinenCNN(linen.Module):
  num_classes: int

  @linen.compact
  def __call__(self, x, train: bool = False):
    h = linen.Conv(32, kernel_size=(5,), strides=(2,))(x.reshape(x.shape[0], -1, 1))
    h = linen.relu(linen.BatchNorm(use_running_average=not train, momentum=0.99)(h))
    h = linen.relu(linen.Conv(32, kernel_size=(3,), strides=(2,))(h))
    h = jnp.concatenate([h.mean(axis=1), h.max(axis=1)], axis=-1)
    return linen.Dense(self.num_classes)(linen.Dropout(0.1, deterministic=not train)(h))
