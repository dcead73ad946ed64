import re
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
    ('vit', (8, 8, 3)), ('vit', (40,)),
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


def vit(**settings):
  return models.create(ml_collections.ConfigDict({'name': 'vit', 'width': 16, 'depth': 2,
                                                  'heads': 2, **settings}), num_classes=5)


def test_vit_cuts_images_and_sequences_into_patches_with_a_class_token_or_mean_pooling():
  params = lambda model, shape: state_lib.init_state(model, optax.adam(1e-3), shape, 0).params
  image = params(vit(patch_size=2), (8, 8, 3))
  assert image['patch_embedding']['kernel'].shape == (2, 2, 3, 16)
  assert image['position_embedding'].shape == (1, 16 + 1, 16)  # 4x4 patches and the class token
  sequence = params(vit(patch_size=4, pool='mean'), (40,))
  assert sequence['patch_embedding']['kernel'].shape == (4, 1, 16)
  assert sequence['position_embedding'].shape == (1, 10, 16) and 'cls_token' not in sequence
  assert sorted(k for k in image if k.startswith('block_')) == ['block_0', 'block_1']


def test_vit_dropout_acts_in_training_only():
  model = vit(patch_size=4, dropout=0.5)
  variables = {'params': state_lib.init_state(model, optax.adam(1e-3), (40,), 0).params}
  x = jax.random.normal(jax.random.key(0), (4, 40))
  train = lambda key: model.apply(variables, x, train=True, rngs={'dropout': key})
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


@pytest.mark.parametrize('settings, words', [
    ({'name': 'mlp', 'heads': 2}, "model.heads is for vit; 'mlp' does not take it"),
    ({'name': 'gru', 'dropout': 0.1}, 'model.dropout is for mlp, cnn1d, cnn2d, vit'),
    ({'name': 'linear', 'width': 8}, "'linear' does not take it"),
    ({'name': 'vit', 'width': 10, 'heads': 4}, 'must be a multiple of model.heads=4'),
    ({'name': 'helpers.user_models:TinyNet', 'patch_size': 2},
     "model.patch_size=2: your model 'helpers.user_models:TinyNet' takes no patch_size "
     'argument; add one (the built-in vit take it)'),
])
def test_a_key_the_model_does_not_take_is_one_line_naming_the_models_that_do(settings, words):
  from recipe_jax.config import check as config_check
  from recipe_jax.config import defaults
  config = defaults.get_config()
  config.model.update(settings)
  with pytest.raises(UserError, match=re.escape(words)):
    config_check.check(config)


def test_a_user_model_gets_each_model_key_it_takes_linen_and_nnx():
  """model.dropout and model.width reach a user's module that has those arguments, as they
  reach the built-in ones (a recipe's compare variant {"model.dropout": 0.2} works on it)."""
  config = ml_collections.ConfigDict({'name': 'helpers.zoo:GapDropoutCNN', 'width': 8,
                                      'dropout': 0.5, 'depth': None, 'heads': None,
                                      'mlp_ratio': None, 'patch_size': None, 'pool': None})
  model = models.create(config, num_classes=3)
  assert (model.width, model.dropout) == (8, 0.5)
  config.name, config.width, config.dropout = 'helpers.nnx_models:CNN', None, 0.3
  with pytest.raises(UserError, match="takes no dropout argument"):
    models.create(config, num_classes=3)


def test_a_patch_size_that_does_not_divide_the_input_is_one_line():
  config = ml_collections.ConfigDict({'name': 'vit', 'patch_size': 3})
  with pytest.raises(UserError, match=r'model.patch_size=3 does not divide the input \(8 x 8\)'):
    models.check_input(config, (8, 8, 1))
  models.check_input(config, (9, 9, 1))  # divides: no error
  models.check_input(ml_collections.ConfigDict({'name': 'mlp'}), (7,))


def test_a_user_model_gets_model_width_only_when_it_takes_one():
  config = ml_collections.ConfigDict({'name': 'helpers.user_models:TinyNet', 'width': 8})
  with pytest.raises(UserError, match='takes no width argument'):
    models.create(config, num_classes=3)
