"""Recipe step 2 checks: each planted training bug must make its check FAIL; a correct model passes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from recipe_jax import checks, models


class SubtractsBatchMean(nn.Module):  # a classic silent bug: normalising over the batch axis
  @nn.compact
  def __call__(self, x, train=False):
    return models.MLP(num_classes=5)(x - x.mean(axis=0, keepdims=True))


class TransposesBatchIntoFeatures(nn.Module):  # reshape instead of transpose, across the batch
  @nn.compact
  def __call__(self, x, train=False):
    return models.MLP(num_classes=5)(x.T.reshape(x.shape))


class DeadFirstLayer(nn.Module):  # a layer whose output is multiplied by zero
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(16)(x)) * 0.0
    return nn.Dense(5)(h + 1.0)


class NaNLayer(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(5)(jnp.sqrt(nn.Dense(8)(x) - 1e6))


def setup(model, example_shape=(12,), batch=6):
  x = jax.random.normal(jax.random.key(0), (batch, *example_shape))
  y = jnp.arange(batch) % 5
  variables = model.init(jax.random.key(1), x[:1], train=False)

  def apply_fn(v, inputs, train):
    out = model.apply(v, inputs, train=train, mutable=['batch_stats'] if train else False)
    return out[0] if train else out

  return apply_fn, variables, x, y


def loss_fn(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def dependency(model, **kwargs):
  apply_fn, variables, x, y = setup(model, **kwargs)
  return checks.batch_dependency(apply_fn, variables, x, y, loss_fn,
                                 uses_batch_statistics='batch_stats' in variables)


def grad_check(model):
  apply_fn, variables, x, y = setup(model)
  grad_fn = jax.grad(lambda v, xb, yb: loss_fn(apply_fn(v, xb, False), yb).mean())
  return checks.gradients(grad_fn, variables, x, y)


def test_correct_model_passes_both_checks():
  assert dependency(models.MLP(num_classes=5)).status == 'PASS'
  assert grad_check(models.MLP(num_classes=5)).status == 'PASS'


def test_batch_mean_subtraction_is_caught():
  v = dependency(SubtractsBatchMean())
  assert v.status == 'FAIL' and 'eval mode' in v.summary and 'mixes examples' in v.summary


def test_transposing_batch_into_features_is_caught():
  assert dependency(TransposesBatchIntoFeatures(), example_shape=(6,)).status == 'FAIL'


def test_batchnorm_mixing_in_train_mode_is_explained_not_failed():
  config = ml_collections.ConfigDict({'name': 'resnet18', 'width': 4})
  v = dependency(models.create(config, num_classes=5), example_shape=(8, 8, 3))
  assert v.status == 'PASS' and 'batch statistics' in v.summary
  assert v.evidence['train']['mixed_pairs_loss_input'] and not v.evidence['eval'][
      'mixed_pairs_loss_input']


def test_dead_layer_is_named_by_the_gradient_check():
  v = grad_check(DeadFirstLayer())
  assert v.status == 'FAIL' and 'Dense_0' in v.summary
  assert dependency(DeadFirstLayer()).status == 'FAIL'  # losses ignore their inputs


def test_nan_gradients_fail():
  v = grad_check(NaNLayer())
  assert v.status == 'FAIL' and 'NaN/Inf' in v.summary


def test_two_examples_are_refused():
  apply_fn, variables, x, y = setup(models.MLP(num_classes=5), batch=2)
  with pytest.raises(ValueError, match='at least 4'):
    checks.batch_dependency(apply_fn, variables, x, y, loss_fn)
