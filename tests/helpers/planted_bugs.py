"""Classic silent training bugs, planted through the config's model or loss import path
('helpers.planted_bugs:Name'). The sanity stage must FAIL the check named in each docstring."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax.model import losses


class _MLP(nn.Module):
  num_classes: int
  bug: str = ''

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.bug == 'ctrl_c_when_asked' and os.environ.get('PLANTED_CTRL_C'):
      raise KeyboardInterrupt
    x = x.reshape(x.shape[0], -1)
    if self.bug == 'mixes_batch':
      x = x - x.mean(axis=0, keepdims=True)  # "normalises" over the batch axis
    h = nn.relu(nn.Dense(64)(x))
    if self.bug == 'dead_layer':
      h = h * 0.0  # the layer's output is thrown away: its parameters get no gradient
    h = nn.relu(nn.Dense(64)(h + 1.0))
    if self.bug == 'fixed_mask_in_eval' and not train:
      # "dropout" left on in eval with a mask drawn once: row i of every batch gets mask i
      keep = jax.random.bernoulli(jax.random.key(0), 0.5, (4096, h.shape[-1]))[:len(h)]
      h = jnp.where(keep, h / 0.5, 0.0)
    if self.bug == 'host_noise' and train:
      # noise from numpy's global random state: no key of the pipeline controls it
      h = h + jax.lax.stop_gradient(jax.pure_callback(
          lambda: np.random.normal(size=h.shape).astype(np.float32),
          jax.ShapeDtypeStruct(h.shape, jnp.float32)))
    scale = 100.0 if self.bug == 'final_layer_100x' else 1.0
    kernel_init = lambda *a: scale * nn.initializers.lecun_normal()(*a)
    logits = nn.Dense(self.num_classes, kernel_init=kernel_init)(h)
    return jax.nn.softmax(logits) if self.bug == 'softmax_output' else logits


def Correct(num_classes):  # noqa: N802
  """The same MLP without a bug: must PASS every check."""
  return _MLP(num_classes)


def MixesBatch(num_classes):  # noqa: N802
  """batch_dependency."""
  return _MLP(num_classes, 'mixes_batch')


def DeadLayer(num_classes):  # noqa: N802
  """gradients."""
  return _MLP(num_classes, 'dead_layer')


def FinalLayer100x(num_classes):  # noqa: N802
  """loss_at_init."""
  return _MLP(num_classes, 'final_layer_100x')


def SoftmaxOutput(num_classes):  # noqa: N802
  """overfit_one_batch: probabilities fed to a loss that expects logits cannot reach zero."""
  return _MLP(num_classes, 'softmax_output')


def FixedMaskInEval(num_classes):  # noqa: N802
  """eval_consistency: an example's eval output depends on its position in the batch."""
  return _MLP(num_classes, 'fixed_mask_in_eval')


def HostNoiseInTrain(num_classes):  # noqa: N802
  """eval_consistency: train mode random outside the pipeline's key streams."""
  return _MLP(num_classes, 'host_noise')


def labels_rolled_loss(logits, labels):
  """dumb_baselines: each example is scored against its neighbour's label."""
  return losses.cross_entropy(logits, jnp.roll(labels, 1))




def doubled_cross_entropy(logits, labels):
  """A custom loss with a known relation to cross-entropy: every stage must report it, not CE."""
  return 2.0 * losses.cross_entropy(logits, labels)


def loss_with_wrong_shapes(logits, labels):
  """A user loss that breaks: labels one-hot encoded with the wrong number of classes."""
  return -(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 3)).sum(-1)


# Causes the diagnosis must name (AUTOTRAINER's classes and others): each docstring gives the
# words the `diagnosis` verdict must contain.
class _Deep(nn.Module):
  num_classes: int
  activation: str = 'relu'
  depth: int = 3
  width: int = 64
  init_scale: float = 1.0  # x the variance-preserving std for the activation
  bias: float = 0.0
  constant: float | None = None  # every hidden kernel entry this value: symmetric units

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    act = {'relu': nn.relu, 'sigmoid': nn.sigmoid, 'tanh': jnp.tanh}[self.activation]
    gain = 2.0 if self.activation == 'relu' else 1.0
    for _ in range(self.depth):
      if self.constant is None:
        init = nn.initializers.variance_scaling(gain * self.init_scale ** 2, 'fan_in', 'normal')
      else:
        init = nn.initializers.constant(self.constant)
      h = act(nn.Dense(self.width, kernel_init=init,
                       bias_init=nn.initializers.constant(self.bias))(h))
    return nn.Dense(self.num_classes)(h)


def DeepSigmoid(num_classes):  # noqa: N802
  """vanishing gradients: ten sigmoid layers with a default (LeCun) init."""
  return _Deep(num_classes, 'sigmoid', depth=10)


def ExplodingInit(num_classes):  # noqa: N802
  """exploding gradients: eight ReLU layers initialised 2.5x too large."""
  return _Deep(num_classes, 'relu', depth=8, init_scale=2.5)


def NegativeBias(num_classes):  # noqa: N802
  """dying ReLU: biases initialised at -3, below every pre-activation."""
  return _Deep(num_classes, 'relu', depth=2, bias=-3.0)


def SaturatedTanh(num_classes):  # noqa: N802
  """saturated units: tanh layers whose weights are 6x too large."""
  return _Deep(num_classes, 'tanh', depth=3, init_scale=6.0)


def ConstantInit(num_classes):  # noqa: N802
  """symmetric init: every hidden weight 0.01."""
  return _Deep(num_classes, 'relu', depth=2, constant=0.01)


def shifted_targets_loss(logits, labels):
  """targets differ from the labels: the loss assumes 1-based labels (one_hot(labels - 1)), so
  it trains every example toward the class below its label."""
  targets = jax.nn.one_hot(labels - 1, logits.shape[-1])
  return -(jax.nn.log_softmax(logits) * targets).sum(-1)


class _DriftingBias(nn.Module):
  """A hand-written 'running shift' that grows by `drift` with every train-mode call and is
  subtracted before the first ReLU: its units die one after another during training, a layer
  that is alive at the first eval and dead by the last."""
  num_classes: int
  drift: float = 0.05

  @nn.compact
  def __call__(self, x, train: bool = False):
    calls = self.variable('batch_stats', 'calls', lambda: jnp.zeros((), jnp.float32))
    if train and not self.is_initializing():
      calls.value = calls.value + 1.0
    h = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)) - self.drift * calls.value)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(64)(h)))


def DriftingBias(num_classes):  # noqa: N802
  """layer_health (train): Dense_1's ReLU inputs die mid-run."""
  return _DriftingBias(num_classes)


def CtrlCWhenAsked(num_classes):  # noqa: N802
  """The MLP; with PLANTED_CTRL_C in the environment, applying it raises KeyboardInterrupt, as
  a Ctrl-C arriving there would (where no training loop catches it)."""
  return _MLP(num_classes, bug='ctrl_c_when_asked')
