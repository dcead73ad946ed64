"""Classic silent training bugs, planted through the config's model or loss import path
('helpers.planted_bugs:Name'). The sanity stage must FAIL the check named in each docstring."""
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
