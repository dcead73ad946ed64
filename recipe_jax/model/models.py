"""Flax models by name, or a user's own via `package.module:Factory`.

Every model maps a batch of examples to logits and is called as `model(x, train=bool)`; a
user's Flax NNX model is wrapped into one (`nnx_models`).
The MNIST-1D models (linear, mlp, cnn1d, gru) follow the MNIST-1D paper's reference
implementations, initialisation included.
"""
import functools
import inspect
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax.model import keys, nnx_models, user_code
from recipe_jax.trees import get_leaf, replace_leaf
from recipe_jax.errors import UserError


def _as_sequence(x):
  """(B, L) -> (B, L, 1); (B, H, W, C) -> (B, H, W*C): rows become time steps."""
  if x.ndim == 2:
    return x[..., None]
  if x.ndim == 4:
    return x.reshape(x.shape[0], x.shape[1], -1)
  return x


def symmetric_uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def reference_dense(features: int, fan_in: int, dtype=jnp.float32) -> nn.Dense:
  """PyTorch's default Linear init, U(+-1/sqrt(fan_in)) for weights and biases, as in the
  MNIST-1D reference models (Flax's lecun_normal weights are sqrt(3) wider, biases zero)."""
  init = symmetric_uniform(fan_in ** -0.5)
  return nn.Dense(features, kernel_init=init, bias_init=init, dtype=dtype)


def float32_logits(logits):
  """Mixed precision: the layers compute in `dtype`; the loss and softmax see float32."""
  return logits.astype(jnp.float32)


def _flat(x):
  return x.reshape(x.shape[0], -1)


class Linear(nn.Module):
  num_classes: int
  dtype: Any = jnp.float32  # computation; parameters stay float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _flat(x).astype(self.dtype)
    return float32_logits(reference_dense(self.num_classes, x.shape[-1], self.dtype)(x))


class MLP(nn.Module):
  """Two hidden ReLU layers, the second with a residual connection (MNIST-1D reference)."""
  num_classes: int
  width: int = 100
  dropout: float = 0.0
  depth: int = 2  # hidden layers; each after the first is residual
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _flat(x).astype(self.dtype)
    h = nn.relu(reference_dense(self.width, x.shape[-1], self.dtype)(x))
    for _ in range(self.depth - 1):
      h = h + nn.relu(reference_dense(self.width, self.width, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return float32_logits(reference_dense(self.num_classes, self.width, self.dtype)(h))


class CNN1D(nn.Module):
  """Three stride-2 convolutions (kernels 5, 3, 3) then a linear classifier (MNIST-1D reference)."""
  num_classes: int
  width: int = 25
  dropout: float = 0.0
  depth: int = 3  # stride-2 convolutions: kernel 5, then 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _as_sequence(x).astype(self.dtype)
    for kernel in (5, *[3] * (self.depth - 1)):
      init = symmetric_uniform((h.shape[-1] * kernel) ** -0.5)  # PyTorch Conv1d default
      h = nn.relu(nn.Conv(self.width, (kernel,), strides=(2,), padding=[(1, 1)],
                          kernel_init=init, bias_init=init, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(_flat(h))
    return float32_logits(reference_dense(self.num_classes, h.shape[-1], self.dtype)(h))


class GRU(nn.Module):
  """Bidirectional GRU; the outputs of all time steps feed a linear layer (MNIST-1D reference).

  Weights start as in the reference (PyTorch) GRU, U(+-1/sqrt(width)). Flax's default
  lecun_normal gives the input kernel std 1 for a single input feature, ~4x larger, which
  saturates the gates at the start.
  """
  num_classes: int
  width: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = symmetric_uniform(self.width ** -0.5)
    cell = functools.partial(nn.GRUCell, self.width, kernel_init=init,
                             recurrent_kernel_init=init, bias_init=init, dtype=self.dtype)
    h = _flat(nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell()))(
        _as_sequence(x).astype(self.dtype)))
    return float32_logits(reference_dense(self.num_classes, h.shape[-1], self.dtype)(h))


class CNN2D(nn.Module):
  """A small image CNN: two 3x3 conv layers, a stride-2 one, and a hidden dense layer."""
  num_classes: int
  width: int = 32
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    h = nn.relu(nn.Conv(self.width, (3, 3), dtype=self.dtype)(x))
    h = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2), dtype=self.dtype)(h))
    h = nn.relu(nn.Dense(4 * self.width, dtype=self.dtype)(h.reshape(h.shape[0], -1)))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return float32_logits(nn.Dense(self.num_classes, dtype=self.dtype)(h))


class ResidualBlock(nn.Module):
  filters: int
  strides: int
  norm: Any
  bottleneck: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    if self.bottleneck:
      h = nn.relu(self.norm()(conv(self.filters, (1, 1))(x)))
      h = nn.relu(self.norm()(conv(self.filters, (3, 3), strides=self.strides)(h)))
      h = self.norm(scale_init=nn.initializers.zeros)(conv(4 * self.filters, (1, 1))(h))
    else:
      h = nn.relu(self.norm()(conv(self.filters, (3, 3), strides=self.strides)(x)))
      h = self.norm(scale_init=nn.initializers.zeros)(conv(self.filters, (3, 3))(h))
    if x.shape != h.shape:
      x = self.norm()(conv(h.shape[-1], (1, 1), strides=self.strides)(x))
    return nn.relu(x + h)


class ResNet(nn.Module):
  """ResNet v1.5. Small inputs (<= 64 px, e.g. CIFAR) get a 3x3 stem without max-pooling.

  BatchNorm uses batch statistics in training (averaged over devices through `bn_axis_name`)
  and the running averages in evaluation.
  """
  num_classes: int
  stage_sizes: Sequence[int]
  bottleneck: bool
  width: int = 64
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    # BatchNorm's statistics are computed in float32 (Flax promotes), its output in dtype.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name=self.bn_axis_name if train else None,
                             dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    if x.shape[1] <= 64:
      h = nn.relu(norm()(conv(self.width, (3, 3))(x)))
    else:
      h = nn.relu(norm()(conv(self.width, (7, 7), strides=2)(x)))
      h = nn.max_pool(h, (3, 3), strides=(2, 2), padding='SAME')
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        h = ResidualBlock(self.width * 2**i, 2 if i > 0 and j == 0 else 1, norm,
                          self.bottleneck, self.dtype)(h)
    return float32_logits(nn.Dense(self.num_classes, dtype=self.dtype)(
        jnp.mean(h.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)))


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x)) (ViT, Dosovitskiy
  et al. 2020), with dropout after attention and in the MLP."""
  heads: int
  mlp_ratio: float
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    width = x.shape[-1]
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype, dropout_rate=self.dropout,
                                        deterministic=not train)(h, h)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.gelu(nn.Dense(int(self.mlp_ratio * width), dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Dense(width, dtype=self.dtype)(h)
    return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class ViT(nn.Module):
  """Vision Transformer: non-overlapping patches embedded linearly, learned position
  embeddings, `depth` pre-LN encoder blocks, a final LayerNorm, and a linear head on the class
  token (`pool='cls'`) or on the mean of the tokens (`pool='mean'`).

  Images (B, H, W, C) are cut into patch_size x patch_size squares; 1-D inputs (B, L) into
  runs of patch_size positions. `check_input` says when a patch size does not divide the input.
  """
  num_classes: int
  width: int = 64
  depth: int = 4
  heads: int = 4
  mlp_ratio: float = 4.0
  patch_size: int = 4
  pool: str = 'cls'
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = (x[..., None] if x.ndim in (2, 3) else x).astype(self.dtype)  # a channel axis
    patch = (self.patch_size,) * (x.ndim - 2)
    tokens = nn.Conv(self.width, patch, strides=patch, padding='VALID', dtype=self.dtype,
                     name='patch_embedding')(x)
    tokens = tokens.reshape(tokens.shape[0], -1, self.width)
    if self.pool == 'cls':
      cls = self.param('cls_token', nn.initializers.zeros, (1, 1, self.width))
      tokens = jnp.concatenate(
          [jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width)).astype(self.dtype), tokens], 1)
    position = self.param('position_embedding', nn.initializers.normal(0.02),
                          (1, tokens.shape[1], self.width))
    h = nn.Dropout(self.dropout, deterministic=not train)(tokens + position.astype(self.dtype))
    for i in range(self.depth):
      h = EncoderBlock(self.heads, self.mlp_ratio, self.dropout, self.dtype,
                       name=f'block_{i}')(h, train)
    h = nn.LayerNorm(dtype=self.dtype, name='final_norm')(h)
    pooled = h[:, 0] if self.pool == 'cls' else jnp.mean(h, axis=1)
    return float32_logits(nn.Dense(self.num_classes, dtype=self.dtype, name='head')(pooled))


MODELS = {
    'linear': Linear,
    'mlp': MLP,
    'cnn1d': CNN1D,
    'gru': GRU,
    'cnn2d': CNN2D,
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), bottleneck=False),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
    'vit': ViT,
}
assert tuple(MODELS) == keys.BUILT_IN


def check_name(name: str) -> None:
  """Raises UserError unless `name` is a built-in model or a `package.module:Factory` path."""
  if name not in MODELS:
    if ':' not in name:
      raise UserError(f"unknown model '{name}'; use one of {', '.join(MODELS)} or "
                      "'package.module:Factory' for your own Flax module")
    user_code.load(name, 'model')


def check_keys(model_config) -> None:
  """A one-line UserError for a model.* key set that the model does not take (a user's model
  takes one where its factory has an argument of that name)."""
  takes = None
  if model_config.name not in MODELS:
    factory = user_code.load(model_config.name, 'model')
    takes = lambda key: nnx_models.takes(factory, key)
  found = keys.problems(model_config, takes)
  if found:
    raise UserError('; '.join(found))


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create(model_config, num_classes: int, bn_axis_name: str | None = None,
           compute_dtype: str = 'float32') -> nn.Module:
  """The configured model. A user's Linen factory is called as Factory(num_classes=...), an
  NNX one (it takes `rngs`) as Factory(num_classes, rngs=...) inside `nnx_models.NNXModel`;
  both with `dtype=` too when the compute dtype is not float32."""
  check_name(model_config.name)
  check_keys(model_config)
  dtype = COMPUTE_DTYPES[compute_dtype]
  if model_config.name not in MODELS:
    factory = user_code.load(model_config.name, 'model')
    extra = {key: model_config.get(key) for key in keys.TAKEN_BY
             if keys.is_set(key, model_config.get(key))}  # check_keys: the factory takes them
    if compute_dtype != 'float32':
      if not nnx_models.takes(factory, 'dtype'):
        raise UserError(f"compute_dtype={compute_dtype}: your model '{model_config.name}' takes "
                        'no dtype argument; add a dtype field (the computation dtype) to it, '
                        'or use compute_dtype=float32')
      extra['dtype'] = dtype
    if nnx_models.is_nnx_factory(factory):  # built inside init / apply, through the bridge
      options = tuple(sorted((k, v) for k, v in extra.items() if k != 'dtype'))
      return nnx_models.NNXModel(factory, num_classes, dtype, options)
    with user_code.phase('when built'):
      return factory(num_classes=num_classes, **extra)
  kwargs = {'num_classes': num_classes, 'dtype': dtype}
  for key in keys.TAKEN_BY:
    value = model_config.get(key)
    if keys.is_set(key, value):  # keys.problems made sure the model takes it
      kwargs[key] = value
  if model_config.name.startswith('resnet'):
    kwargs['bn_axis_name'] = bn_axis_name
  return MODELS[model_config.name](**kwargs)


def check_input(model_config, example_shape) -> None:
  """A one-line UserError when the model cannot take examples of this shape (a ViT patch size
  that does not divide the input)."""
  if model_config.name != 'vit':
    return
  patch = model_config.get('patch_size') or ViT.patch_size
  spatial = example_shape[:2] if len(example_shape) >= 3 else example_shape[:1]
  if any(n % patch for n in spatial):
    raise UserError(f"model.patch_size={patch} does not divide the input ({' x '.join(map(str, spatial))}); "
                    f"use a divisor of {' and '.join(map(str, sorted(set(spatial))))}")


def reference_width(name: str) -> int | None:
  """A built-in model's default width (None for user models)."""
  if name not in MODELS:
    return None
  builder = MODELS[name]
  cls = builder.func if isinstance(builder, functools.partial) else builder
  return getattr(cls, 'width', None)


def takes_train_flag(model: nn.Module) -> bool:
  """User modules may omit the `train` argument; ours all take it."""
  return 'train' in inspect.signature(model.__call__).parameters


def output_bias_candidates(params, num_classes: int) -> list[tuple]:
  """Paths of every 'bias' of shape (num_classes,), the most recently created layer first."""
  found = []

  def walk(tree, path):
    for key, value in tree.items():  # Flax keeps submodules in creation order
      if hasattr(value, 'items'):
        walk(value, (*path, key))
      elif key == 'bias' and np.shape(value) == (num_classes,):
        found.append((*path, key))

  walk(params, ())
  return found[::-1]


def logits_rtol(model) -> float:
  """How exactly a shifted output bias shows in the logits: bfloat16 keeps ~3 digits."""
  return 1e-4 if getattr(model, 'dtype', jnp.float32) == jnp.float32 else 1e-2


def find_output_bias(logits_fn, params, num_classes: int, rtol: float = 1e-4):
  """The bias that adds directly to the logits, or None.

  Shape alone can pick a hidden layer of the same width, and a bias followed by a softmax has
  the right shape but does not add to the logits; so each candidate is shifted and only one
  that shifts every logit by exactly that amount is accepted. `logits_fn(params) -> logits`.
  """
  base = np.asarray(logits_fn(params))
  shift = np.linspace(-1.0, 1.0, num_classes, dtype=np.float32)
  tolerance = rtol * (1.0 + np.abs(base).max())  # bfloat16 logits: ~1e-2
  for path in output_bias_candidates(params, num_classes):
    shifted = logits_fn(replace_leaf(params, path, get_leaf(params, path) + shift))
    if np.allclose(np.asarray(shifted) - base, shift, rtol=0, atol=tolerance):
      return path
  return None


def class_log_prior(labels, num_classes: int) -> np.ndarray:
  """log of each class's frequency; an absent class counts as one example, not log(0)."""
  counts = np.maximum(np.bincount(labels, minlength=num_classes), 1)
  return np.log(counts / counts.sum()).astype(np.float32)
