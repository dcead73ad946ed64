"""A zoo of ordinary models, written as users write them (the shapes of flax's and Keras's
examples and of common blocks), for the false-alarm measurements: a healthy model must get no
FAIL and no non-PASS diagnosis. Each is loaded as 'helpers.zoo:<name>' and takes MNIST-1D's
(B, 40) and digits' (B, 8, 8, 1) inputs alike (1-D convolutions on the first, 2-D on the second).

HELD_OUT was chosen when the zoo was written, before any of it ran: no threshold is tuned on
those models, and their false alarms are reported apart (scripts/zoo.py).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


def _channels(x):
  """(B, L) -> (B, L, 1); images keep their (B, H, W, C)."""
  return x[..., None] if x.ndim == 2 else x


def _tokens(x):
  """(B, L) -> (B, L, 1) (a position a token); (B, H, W, C) -> (B, H, W*C) (a row a token)."""
  x = _channels(x)
  return x.reshape(x.shape[0], x.shape[1], -1)


def _flat(x):
  return x.reshape(x.shape[0], -1)


def _window(x, size=2):
  return (size,) * (x.ndim - 2)


def _global_average(h):
  return h.mean(axis=tuple(range(1, h.ndim - 1)))


class _Module(nn.Module):
  num_classes: int


# ---- MLPs ----------------------------------------------------------------------------------

class ReluMLP(_Module):
  """flax's MNIST example, dense: two ReLU layers."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(256)(_flat(x)))
    h = nn.relu(nn.Dense(128)(h))
    return nn.Dense(self.num_classes)(h)


class TanhMLP(_Module):
  """The textbook tanh MLP, default init."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = jnp.tanh(nn.Dense(128)(_flat(x)))
    h = jnp.tanh(nn.Dense(128)(h))
    return nn.Dense(self.num_classes)(h)


class SigmoidMLP(_Module):
  """One sigmoid hidden layer, as in a first course."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes)(nn.sigmoid(nn.Dense(100)(_flat(x))))


class DropoutMLP(_Module):
  """Keras's MNIST MLP: ReLU layers with dropout 0.2 after each."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _flat(x)
    for width in (512, 512):
      h = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.Dense(width)(h)))
    return nn.Dense(self.num_classes)(h)


class InputDropoutMLP(_Module):
  """Dropout on the inputs, then SiLU layers with dropout 0.5 (Hinton et al.'s dropout net)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dropout(0.2, deterministic=not train)(_flat(x))
    for _ in range(2):
      h = nn.Dropout(0.5, deterministic=not train)(nn.silu(nn.Dense(256)(h)))
    return nn.Dense(self.num_classes)(h)


class GeluLayerNormMLP(_Module):
  """Dense -> LayerNorm -> GELU, twice."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _flat(x)
    for _ in range(2):
      h = nn.gelu(nn.LayerNorm()(nn.Dense(128)(h)))
    return nn.Dense(self.num_classes)(h)


class BatchNormMLP(_Module):
  """Dense -> BatchNorm -> ReLU, then dropout before the head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _flat(x)
    for _ in range(2):
      h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(128)(h)))
    return nn.Dense(self.num_classes)(nn.Dropout(0.3, deterministic=not train)(h))


class ResidualMLP(_Module):
  """Pre-LN residual blocks: h + Dense(ReLU(Dense(LayerNorm(h))))."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(64)(_flat(x))
    for _ in range(3):
      h = h + nn.Dense(64)(nn.relu(nn.Dense(128)(nn.LayerNorm()(h))))
    return nn.Dense(self.num_classes)(nn.LayerNorm()(h))


class EluMLP(_Module):
  """ELU and leaky-ReLU layers."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.elu(nn.Dense(128)(_flat(x)))
    h = nn.leaky_relu(nn.Dense(128)(h), 0.1)
    return nn.Dense(self.num_classes)(h)


class GluMLP(_Module):
  """A gated linear unit (nn.glu halves a double-width projection)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.glu(nn.Dense(256)(_flat(x)))
    h = nn.glu(nn.Dense(256)(h))
    return nn.Dense(self.num_classes)(h)


class WideShallowMLP(_Module):
  """scikit-learn's MLPClassifier shape: one wide ReLU layer."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(512)(_flat(x))))


class SoftplusMLP(_Module):
  """Softplus layers."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.softplus(nn.Dense(128)(_flat(x)))
    h = nn.softplus(nn.Dense(128)(h))
    return nn.Dense(self.num_classes)(h)


class SwiGLUMLP(_Module):
  """SwiGLU written by hand: silu(W1 x) * (W2 x), then a projection, with a residual."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(64)(_flat(x))
    for _ in range(2):
      u = nn.LayerNorm()(h)
      h = h + nn.Dense(64)(nn.silu(nn.Dense(128)(u)) * nn.Dense(128)(u))
    return nn.Dense(self.num_classes)(h)


class HandSwishMLP(_Module):
  """Swish written by hand (x * sigmoid(x)) and ReLU as jnp.maximum(x, 0)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(128)(_flat(x))
    h = h * jax.nn.sigmoid(h)
    h = jnp.maximum(nn.Dense(128)(h), 0.0)
    return nn.Dense(self.num_classes)(h)


class Relu6MLP(_Module):
  """ReLU6 and hard-tanh layers (mobile-style bounded activations)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = jax.nn.relu6(nn.Dense(128)(_flat(x)))
    h = jax.nn.hard_tanh(nn.Dense(128)(h))
    return nn.Dense(self.num_classes)(h)


# ---- CNNs ----------------------------------------------------------------------------------

class FlaxExampleCNN(_Module):
  """flax's MNIST example: conv-ReLU-avg_pool twice, flatten, a 256-unit ReLU layer."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.avg_pool(nn.relu(nn.Conv(32, _window(h, 3))(h)), _window(h), _window(h))
    h = nn.avg_pool(nn.relu(nn.Conv(64, _window(h, 3))(h)), _window(h), _window(h))
    h = nn.relu(nn.Dense(256)(_flat(h)))
    return nn.Dense(self.num_classes)(h)


class GapDropoutCNN(_Module):
  """The issue's user: two 3x3 convolutions with ReLU, global average pooling, dropout 0.2, a
  dense head; its width and dropout are arguments, so a recipe can tune and compare them."""
  width: int = 32
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.relu(nn.Conv(self.width, _window(h, 3))(h))
    h = nn.relu(nn.Conv(2 * self.width, _window(h, 3))(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(_global_average(h))
    return nn.Dense(self.num_classes)(h)


class GapCNN(GapDropoutCNN):
  """The same without dropout."""
  dropout: float = 0.0


class GapHiddenCNN(_Module):
  """Convolutions, global average pooling, then a hidden dense ReLU layer with dropout."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.relu(nn.Conv(16, _window(h, 3))(h))
    h = nn.relu(nn.Conv(32, _window(h, 3))(h))
    h = nn.relu(nn.Dense(64)(_global_average(h)))
    return nn.Dense(self.num_classes)(nn.Dropout(0.2, deterministic=not train)(h))


class MaxPoolCNN(_Module):
  """Conv-ReLU-max_pool twice, flatten, dropout, a dense head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.max_pool(nn.relu(nn.Conv(32, _window(h, 3))(h)), _window(h), _window(h))
    h = nn.max_pool(nn.relu(nn.Conv(64, _window(h, 3))(h)), _window(h), _window(h))
    return nn.Dense(self.num_classes)(nn.Dropout(0.25, deterministic=not train)(_flat(h)))


class KerasCNN(_Module):
  """Keras's mnist_convnet: two convolutions, max pool, dropout 0.25, dense 128, dropout 0.5."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.relu(nn.Conv(32, _window(h, 3), padding='VALID')(h))
    h = nn.relu(nn.Conv(64, _window(h, 3), padding='VALID')(h))
    h = nn.Dropout(0.25, deterministic=not train)(nn.max_pool(h, _window(h), _window(h)))
    h = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(128)(_flat(h))))
    return nn.Dense(self.num_classes)(h)


class BatchNormCNN(_Module):
  """Conv -> BatchNorm -> ReLU twice, global average pooling."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    for features in (32, 64):
      h = nn.Conv(features, _window(h, 3), use_bias=False)(h)
      h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
    return nn.Dense(self.num_classes)(_global_average(h))


class GroupNormCNN(_Module):
  """Conv -> GroupNorm -> SiLU twice, global average pooling."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    for features in (32, 64):
      h = nn.silu(nn.GroupNorm(num_groups=8)(nn.Conv(features, _window(h, 3))(h)))
    return nn.Dense(self.num_classes)(_global_average(h))


class DepthwiseCNN(_Module):
  """MobileNet blocks: depthwise 3x3, BatchNorm, ReLU6, pointwise 1x1, BatchNorm, ReLU6."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = jax.nn.relu6(nn.BatchNorm(use_running_average=not train)(nn.Conv(32, _window(h, 3))(h)))
    for features in (64, 64):
      h = nn.Conv(h.shape[-1], _window(h, 3), feature_group_count=h.shape[-1])(h)
      h = jax.nn.relu6(nn.BatchNorm(use_running_average=not train)(h))
      h = jax.nn.relu6(nn.BatchNorm(use_running_average=not train)(
          nn.Conv(features, _window(h, 1))(h)))
    return nn.Dense(self.num_classes)(_global_average(h))


class _ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    h = nn.relu(norm()(nn.Conv(self.features, _window(x, 3), use_bias=False)(x)))
    h = norm()(nn.Conv(self.features, _window(x, 3), use_bias=False)(h))
    return nn.relu(x + h)


class ResNetCNN(_Module):
  """A small ResNet: a stem, two basic residual blocks, global average pooling."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(32, _window(h, 3))(h)))
    for _ in range(2):
      h = _ResBlock(32)(h, train)
    return nn.Dense(self.num_classes)(_global_average(h))


class SqueezeExciteCNN(_Module):
  """Convolutions with a squeeze-and-excitation gate: pooled features -> ReLU -> sigmoid,
  multiplying the channels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.relu(nn.Conv(32, _window(h, 3))(h))
    h = nn.relu(nn.Conv(32, _window(h, 3))(h))
    gate = nn.sigmoid(nn.Dense(32)(nn.relu(nn.Dense(8)(_global_average(h)))))
    h = h * gate.reshape(gate.shape[0], *[1] * (h.ndim - 2), gate.shape[-1])
    return nn.Dense(self.num_classes)(_global_average(h))


class LeNetTanh(_Module):
  """LeNet-5's shape: conv-tanh-avg_pool twice, then tanh dense layers."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.avg_pool(jnp.tanh(nn.Conv(6, _window(h, 5))(h)), _window(h), _window(h))
    h = nn.avg_pool(jnp.tanh(nn.Conv(16, _window(h, 5))(h)), _window(h), _window(h))
    h = jnp.tanh(nn.Dense(120)(_flat(h)))
    h = jnp.tanh(nn.Dense(84)(h))
    return nn.Dense(self.num_classes)(h)


class ConvNeXtCNN(_Module):
  """A ConvNeXt-style block: depthwise conv, LayerNorm, 4x expansion with GELU, projection,
  residual."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _channels(x)
    h = nn.Conv(32, _window(h, 2), strides=_window(h, 2))(h)
    for _ in range(2):
      u = nn.Conv(32, _window(h, 5), feature_group_count=32)(h)
      u = nn.Dense(32)(nn.gelu(nn.Dense(128)(nn.LayerNorm()(u))))
      h = h + u
    return nn.Dense(self.num_classes)(nn.LayerNorm()(_global_average(h)))


# ---- attention and recurrent cells ---------------------------------------------------------

class TransformerClassifier(_Module):
  """Tokens embedded by a Dense layer, learned positions, one pre-LN transformer block
  (attention, GELU MLP, dropout 0.1), mean-pooled."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    t = nn.Dense(32)(_tokens(x))
    t = t + self.param('positions', nn.initializers.normal(0.02), (1, *t.shape[1:]))
    u = nn.LayerNorm()(t)
    t = t + nn.MultiHeadDotProductAttention(4, deterministic=not train, dropout_rate=0.1)(u, u)
    u = nn.gelu(nn.Dense(64)(nn.LayerNorm()(t)))
    t = t + nn.Dropout(0.1, deterministic=not train)(nn.Dense(32)(u))
    return nn.Dense(self.num_classes)(nn.LayerNorm()(t.mean(axis=1)))


class LSTMClassifier(_Module):
  """An LSTM over the tokens; its last state feeds a dense head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.RNN(nn.OptimizedLSTMCell(32))(_tokens(x))
    return nn.Dense(self.num_classes)(h[:, -1])


class GRUMeanClassifier(_Module):
  """A GRU over the tokens, mean over time, a ReLU layer, a dense head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.RNN(nn.GRUCell(32))(_tokens(x)).mean(axis=1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(32)(h)))


class Conv1DTokens(_Module):
  """A 1-D CNN over the tokens with SiLU and max-over-time pooling (TextCNN's shape)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.silu(nn.Conv(32, (3,))(_tokens(x)))
    h = nn.silu(nn.Conv(32, (3,))(h))
    return nn.Dense(self.num_classes)(nn.Dropout(0.2, deterministic=not train)(h.max(axis=1)))


# ---- NNX -----------------------------------------------------------------------------------

class NnxReluMLP(nnx.Module):
  """flax's NNX MLP: Linear, ReLU, Dropout 0.1, Linear."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, in_features: int = 64):
    self.hidden = nnx.Linear(in_features, 128, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.head = nnx.Linear(128, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(self.dropout(nnx.relu(self.hidden(_flat(x)))))


class NnxTanhMLP(nnx.Module):
  """A tanh MLP in NNX."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, in_features: int = 64):
    self.first = nnx.Linear(in_features, 64, rngs=rngs)
    self.second = nnx.Linear(64, 64, rngs=rngs)
    self.head = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.second(jnp.tanh(self.first(_flat(x))))))


class NnxGapCNN(nnx.Module):
  """NNX: Conv -> BatchNorm -> ReLU twice, global average pooling, dropout, a Linear head
  (1-D convolutions: any input read as a sequence)."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3,), rngs=rngs)
    self.norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3,), rngs=rngs)
    self.norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.head = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    h = _flat(x)[..., None]
    h = nnx.relu(self.norm1(self.conv1(h)))
    h = nnx.relu(self.norm2(self.conv2(h)))
    return self.head(self.dropout(h.mean(axis=1)))


class NnxResidualGelu(nnx.Module):
  """NNX pre-LN residual MLP blocks with GELU."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, in_features: int = 64):
    self.embed = nnx.Linear(in_features, 64, rngs=rngs)
    self.norms = nnx.List([nnx.LayerNorm(64, rngs=rngs) for _ in range(2)])
    self.ups = nnx.List([nnx.Linear(64, 128, rngs=rngs) for _ in range(2)])
    self.downs = nnx.List([nnx.Linear(128, 64, rngs=rngs) for _ in range(2)])
    self.head = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    h = self.embed(_flat(x))
    for norm, up, down in zip(self.norms, self.ups, self.downs):
      h = h + down(nnx.gelu(up(norm(h))))
    return self.head(h)


class NnxAttention(nnx.Module):
  """NNX: tokens embedded, one self-attention block with a residual, mean-pooled."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, token_features: int = 8):
    self.embed = nnx.Linear(token_features, 32, rngs=rngs)
    self.norm = nnx.LayerNorm(32, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False,
                                            rngs=rngs)
    self.mlp = nnx.Linear(32, 32, rngs=rngs)
    self.head = nnx.Linear(32, num_classes, rngs=rngs)

  def __call__(self, x):
    t = self.embed(_tokens(x))
    u = self.norm(t)
    t = t + self.attention(u)
    t = t + self.mlp(nnx.silu(t))
    return self.head(t.mean(axis=1))


# ---- the registry --------------------------------------------------------------------------

LINEN = ('ReluMLP', 'TanhMLP', 'SigmoidMLP', 'DropoutMLP', 'InputDropoutMLP', 'GeluLayerNormMLP',
         'BatchNormMLP', 'ResidualMLP', 'EluMLP', 'GluMLP', 'WideShallowMLP', 'SoftplusMLP',
         'SwiGLUMLP', 'HandSwishMLP', 'Relu6MLP', 'FlaxExampleCNN', 'GapDropoutCNN', 'GapCNN',
         'GapHiddenCNN', 'MaxPoolCNN', 'KerasCNN', 'BatchNormCNN', 'GroupNormCNN', 'DepthwiseCNN',
         'ResNetCNN', 'SqueezeExciteCNN', 'LeNetTanh', 'ConvNeXtCNN', 'TransformerClassifier',
         'LSTMClassifier', 'GRUMeanClassifier', 'Conv1DTokens')
NNX = ('NnxReluMLP', 'NnxTanhMLP', 'NnxGapCNN', 'NnxResidualGelu', 'NnxAttention')
MODELS = LINEN + NNX
HELD_OUT = ('SoftplusMLP', 'SwiGLUMLP', 'HandSwishMLP', 'Relu6MLP', 'KerasCNN', 'DepthwiseCNN',
            'SqueezeExciteCNN', 'ConvNeXtCNN', 'GRUMeanClassifier', 'Conv1DTokens',
            'NnxResidualGelu', 'NnxAttention')
DATASETS = ('mnist1d', 'digits')
# What an NNX model's first Linear is built for, as a user writes it for their data.
_INPUT_FEATURES = {'mnist1d': 40, 'digits': 64}
_TOKEN_FEATURES = {'mnist1d': 1, 'digits': 8}


def _nnx_factory(cls, dataset):
  def factory(num_classes, *, rngs):
    if cls is NnxAttention:
      return cls(num_classes, rngs=rngs, token_features=_TOKEN_FEATURES[dataset])
    if cls is NnxGapCNN:
      return cls(num_classes, rngs=rngs)
    return cls(num_classes, rngs=rngs, in_features=_INPUT_FEATURES[dataset])
  return factory


for _name in NNX:
  for _dataset in DATASETS:
    globals()[f'{_name}_{_dataset}'] = _nnx_factory(globals()[_name], _dataset)


def model_name(name: str, dataset: str) -> str:
  """The config's model.name for zoo model `name` on `dataset`."""
  return f'helpers.zoo:{name}_{dataset}' if name in NNX else f'helpers.zoo:{name}'
