import sys
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from recipe_jax.model import models
from recipe_jax.errors import UserError
from recipe_jax.engine import state as state_lib

sys.path.insert(0, os.path.dirname(__file__))  # for user_models


def model_config(name, width=None):
  return ml_collections.ConfigDict({'name': name, 'width': width})


@pytest.mark.parametrize('name, example_shape', [
    ('linear', (40,)), ('mlp', (40,)), ('cnn1d', (40,)), ('gru', (40,)),
    ('cnn2d', (8, 8, 1)), ('resnet18', (16, 16, 3)), ('resnet50', (16, 16, 3)),
])
def test_every_builtin_model_maps_a_batch_to_logits(name, example_shape):
  width = 8 if name.startswith('resnet') else None  # narrow: the test checks wiring, not capacity
  model = models.create(model_config(name, width), num_classes=7)
  log_prior = np.log(np.arange(1, 8) / 28).astype(np.float32)
  state = state_lib.init_state(model, optax.adam(1e-3), example_shape, seed=0, output_bias=log_prior)
  path = models.output_bias_candidates(state.params, 7)[0]
  np.testing.assert_array_equal(models.get_leaf(state.params, path), log_prior)  # init well
  x = jax.random.normal(jax.random.key(1), (3, *example_shape))
  logits = jax.jit(model.apply)({'params': state.params, 'batch_stats': state.batch_stats}, x)
  assert logits.shape == (3, 7) and bool(jnp.all(jnp.isfinite(logits)))


def test_mnist1d_cnn_matches_the_reference_parameter_count():
  # conv 1->25 k5, 25->25 k3, 25->25 k3, then 125 -> 10: 150 + 1900 + 1900 + 1260
  model = models.create(model_config('cnn1d'), num_classes=10)
  state = state_lib.init_state(model, optax.adam(1e-3), (40,), seed=0)
  assert sum(p.size for p in jax.tree.leaves(state.params)) == 5210


def test_width_override_changes_the_model():
  narrow = models.create(model_config('mlp', width=8), num_classes=10)
  state = state_lib.init_state(narrow, optax.adam(1e-3), (40,), seed=0)
  assert state.params['Dense_0']['kernel'].shape == (40, 8)


def test_batchnorm_uses_batch_statistics_in_train_and_running_ones_in_eval():
  model = models.create(model_config('resnet18', width=8), num_classes=3)
  state = state_lib.init_state(model, optax.adam(1e-3), (8, 8, 3), seed=0)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = 5.0 + jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  _, updates = apply(variables, x, train=True, mutable=('batch_stats',))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       updates['batch_stats'], state.batch_stats)
  assert max(jax.tree.leaves(moved)) > 0  # training updates the running statistics
  eval_a = apply(variables, x, train=False)
  eval_b = apply(variables, x[:1], train=False)
  np.testing.assert_allclose(eval_a[:1], eval_b, rtol=1e-5, atol=1e-5)  # eval: per-example


def test_user_model_from_import_path():
  model = models.create(model_config('helpers.user_models:TinyNet'), num_classes=4)
  state = state_lib.init_state(model, optax.adam(1e-3), (5,), seed=0)
  assert state.params['Dense_0']['kernel'].shape == (5, 4)


@pytest.mark.parametrize('name, message', [
    ('transformer', "unknown model 'transformer'; use one of linear, mlp"),
    ('no_such_pkg.mod:Net', "cannot import module 'no_such_pkg.mod'"),
    ('helpers.user_models:Missing', "module 'helpers.user_models' has no callable 'Missing'"),
])
def test_bad_model_names_are_user_errors(name, message):
  with pytest.raises(UserError, match=message):
    models.check_name(name)


def test_gru_starts_from_the_reference_uniform_init():
  model = models.create(model_config('gru'), num_classes=10)
  params = state_lib.init_state(model, optax.adam(1e-3), (40,), seed=0).params
  gru_leaves = jax.tree.leaves({k: v for k, v in params.items() if k != 'Dense_0'})
  bound = 6 ** -0.5
  assert max(float(jnp.abs(leaf).max()) for leaf in gru_leaves) <= bound
  assert min(float(jnp.abs(leaf).max()) for leaf in gru_leaves) > bound / 2  # biases too


def test_mnist1d_mlp_starts_from_the_reference_pytorch_init():
  model = models.create(model_config('mlp'), num_classes=10)
  first = state_lib.init_state(model, optax.adam(1e-3), (40,), seed=0).params['Dense_0']
  bound = 40 ** -0.5  # U(+-1/sqrt(fan_in)) for weights and biases
  for leaf in (first['kernel'], first['bias']):
    assert bound / 2 < float(jnp.abs(leaf).max()) <= bound
