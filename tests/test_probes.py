"""Looking inside the net: layers recorded for Linen and NNX models without touching their code,
and the verdicts that name a layer and a cause on planted models, near each threshold, and stay
quiet on clean ones."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import nnx_models as user_nnx, planted_bugs
from recipe_jax.diagnose import inside, probes
from recipe_jax.engine import state as state_lib
from recipe_jax.model import layers, losses, models, nnx_models

KEY = jax.random.key(3)


def measured(model, example_shape=(16,), batch=32, params=None, seed=0):
  """(order, unseen, measurements at these params (default: init), params)."""
  x = jax.random.normal(jax.random.key(seed), (batch, *example_shape))
  y = jnp.arange(batch) % 4
  variables = model.init({'params': jax.random.key(seed + 1), 'dropout': KEY}, x[:1],
                         train=False)
  if params is not None:
    variables = {**variables, 'params': params}
  order, unseen = probes.layer_order(model, variables, x, KEY)
  kernels = order if not unseen else layers.kernel_layers(variables['params'])
  found = probes.measure(model, losses.cross_entropy, order, kernels, variables['params'],
                         variables.get('batch_stats', {}), x, y, KEY)
  return order, unseen, found, variables['params']


def test_linen_layers_are_recorded_in_call_order_with_the_nonlinearity_between_them():
  order, unseen, found, _ = measured(planted_bugs._Deep(4, 'tanh', depth=2))
  assert order == ['Dense_0', 'Dense_1', 'Dense_2'] and unseen == []
  assert probes.kinds(found, order) == {'Dense_0': 'input', 'Dense_1': 'tanh', 'Dense_2': 'tanh'}
  assert set(found['grad_norm']) == set(order)


def test_nnx_layers_are_recorded_through_the_bridge():
  model = nnx_models.NNXModel(user_nnx.CNN, 4)
  order, unseen, found, _ = measured(model)
  assert order == ['nnx/conv1', 'nnx/conv2', 'nnx/head'] and unseen == []
  assert all(found['grad_norm'][k] > 0 for k in order)


def test_layers_inside_a_loop_are_named_as_not_seen_and_still_get_gradients():
  order, unseen, found, params = measured(models.GRU(num_classes=4, width=4))
  assert order == ['Dense_0'] and len(unseen) == 6 * 2  # 6 projections a direction
  v = inside.activations_seen(order, unseen)
  assert v.status == 'WARN' and 'not seen' in v.summary and 'GRUCell_0/hn' in v.summary
  kernels = layers.kernel_layers(params)
  assert set(kernels) == set(order + unseen)


def test_a_model_with_every_layer_seen_passes_activations_seen():
  order, unseen, _, _ = measured(models.MLP(num_classes=4, width=16))
  assert inside.activations_seen(order, unseen).status == 'PASS'


def test_vanishing_gradients_are_named_with_the_layers():
  order, _, found, _ = measured(planted_bugs.DeepSigmoid(4))
  v = inside.gradient_flow(found, None, order, 1e3, 10)
  assert v.status == 'FAIL' and v.summary.startswith('vanishing gradients')
  assert 'Dense_0' in v.summary and 'Dense_10' in v.summary


def test_exploding_gradients_are_named():
  order, _, found, _ = measured(planted_bugs.ExplodingInit(4))
  v = inside.gradient_flow(found, None, order, 1e3, 10)
  assert v.status == 'FAIL' and v.summary.startswith('exploding gradients'), v.summary


@pytest.mark.parametrize('model', [models.MLP(num_classes=4, width=32), models.CNN1D(num_classes=4),
                                   models.Linear(num_classes=4)])
def test_clean_models_have_no_finding_inside(model):
  order, _, found, params = measured(model, batch=64)
  kinds = probes.kinds(found, order)
  assert inside.gradient_flow(found, found, order, 1e3, 10).status == 'PASS'
  assert inside.dead_units(found, found, order, kinds, params, 1e-3, 0.5).status == 'PASS'
  assert inside.saturation(found, found, order, kinds, 0.5).status == 'PASS'
  assert inside.symmetric_init(params, order, 0.5).status == 'PASS'


def ratio_measurement(first_over_last, relative=1.0):
  return {'grad_norm': {'a': first_over_last, 'b': 1.0, 'c': 1.0},
          'weight_norm': {'a': first_over_last / relative, 'b': 1.0, 'c': 1.0}}


@pytest.mark.parametrize('ratio, status', [(1 / 1.2e3, 'FAIL'), (1 / 0.8e3, 'PASS'),
                                           (1.2e3, 'FAIL'), (0.8e3, 'PASS')])
def test_gradient_flow_threshold(ratio, status):
  v = inside.gradient_flow(ratio_measurement(ratio, relative=1.0), None, ['a', 'b', 'c'], 1e3,
                           1e4)
  assert v.status == status


@pytest.mark.parametrize('relative, status', [(12.0, 'FAIL'), (8.0, 'PASS')])
def test_gradient_larger_than_its_weights_threshold(relative, status):
  v = inside.gradient_flow(ratio_measurement(1.0, relative), None, ['a', 'b', 'c'], 1e3, 10)
  assert v.status == status
  if status == 'FAIL':
    assert 'exploding gradients' in v.summary and 'the gradient of a is 12x' in v.summary


def test_a_gradient_vanishing_at_init_only_passes():
  """Behind a zero-initialised scale the first layers get nothing at init; after the short
  run they do: not a vanishing gradient."""
  v = inside.gradient_flow(ratio_measurement(1e-9), ratio_measurement(0.5), ['a', 'b', 'c'],
                           1e3, 10)
  assert v.status == 'PASS'


def dead_at(bias):
  """A ReLU layer of 64 units whose biases are `bias` (a vector): a unit is dead when its bias
  is below every pre-activation of the batch."""
  model = planted_bugs._Deep(4, 'relu', depth=1)
  order, _, init, params = measured(model, batch=64)
  params = jax.tree.map(lambda a: a, params)
  params['Dense_0']['bias'] = jnp.asarray(bias, jnp.float32)
  _, _, found, _ = measured(model, batch=64, params=params)
  return order, found, params


@pytest.mark.parametrize('dead, status', [(36, 'FAIL'), (28, 'PASS')])
def test_dead_units_threshold_names_the_layer_and_the_negative_bias(dead, status):
  bias = np.zeros(64)
  bias[:dead] = -1e3  # far below any pre-activation: dead for every example
  order, found, params = dead_at(bias)
  kinds = probes.kinds(found, order)
  assert kinds['Dense_1'] == 'relu'
  v = inside.dead_units(found, None, order, kinds, params, 1e-3, 0.5)
  assert v.status == status
  assert v.evidence['layers']['Dense_1']['init'] == pytest.approx(dead / 64)
  if status == 'FAIL':
    assert "Dense_0's ReLU units" in v.summary and 'large negative bias' in v.summary


def test_units_quiet_at_init_that_the_short_run_revives_are_not_dead():
  order, dead, params = dead_at(np.full(64, -1e3))
  _, alive, _ = dead_at(np.zeros(64))
  kinds = probes.kinds(alive, order)
  assert inside.dead_units(dead, alive, order, kinds, params, 1e-3, 0.5).status == 'PASS'
  v = inside.dead_units(dead, dead, order, kinds, params, 1e-3, 0.5)  # still dead after
  assert v.status == 'FAIL' and 'large negative bias' in v.summary


@pytest.mark.parametrize('dead, status', [(64, 'WARN'), (60, 'WARN'), (55, 'PASS')])
def test_units_that_die_during_the_short_run_blame_the_learning_rate(dead, status):
  """Half the units dying under Adam is common and harmless; nearly all (90%) is not."""
  order, alive, params = dead_at(np.zeros(64))
  bias = np.zeros(64)
  bias[:dead] = -1e3
  _, after, _ = dead_at(bias)
  v = inside.dead_units(alive, after, order, probes.kinds(alive, order), params, 0.5, 0.5)
  assert v.status == status
  if status == 'WARN':
    assert 'died during the short run' in v.summary and '0.5' in v.summary


def test_saturated_tanh_is_named():
  order, _, found, _ = measured(planted_bugs.SaturatedTanh(4))
  v = inside.saturation(found, None, order, probes.kinds(found, order), 0.5)
  assert v.status == 'FAIL' and "Dense_0's tanh outputs are saturated" in v.summary


@pytest.mark.parametrize('scale, status', [(0.05, 'PASS'), (30.0, 'FAIL')])
def test_saturation_near_its_threshold(scale, status):
  """One tanh layer over inputs scaled so that about a third / two thirds of its outputs lie
  beyond 0.99."""
  model = planted_bugs._Deep(4, 'tanh', depth=1)
  order, _, found, params = measured(model, batch=256)
  params['Dense_0']['kernel'] = params['Dense_0']['kernel'] * scale
  _, _, found, _ = measured(model, batch=256, params=params)
  v = inside.saturation(found, None, order, probes.kinds(found, order), 0.5)
  assert v.status == status, v.summary


def test_constant_and_zero_init_are_named_as_symmetric():
  order, _, _, params = measured(planted_bugs.ConstantInit(4))
  v = inside.symmetric_init(params, order, 0.5)
  assert v.status == 'FAIL' and "Dense_0's 64 units start with identical" in v.summary
  params['Dense_0']['kernel'] = jnp.zeros_like(params['Dense_0']['kernel'])
  v = inside.symmetric_init(params, order, 0.5)  # zero, and feeding Dense_1's copied rows
  assert v.status == 'FAIL' and "Dense_0's 64 units start with all zero" in v.summary


def test_copies_that_feed_the_next_layer_through_different_weights_are_not_symmetric():
  """A zero-initialised branch (ReZero, LoRA's B) parts after one step: its units' outgoing
  weights differ, so do their gradients."""
  order, _, _, params = measured(planted_bugs._Deep(4, 'tanh', depth=2))
  params['Dense_0']['kernel'] = jnp.zeros_like(params['Dense_0']['kernel'])
  v = inside.symmetric_init(params, order, 0.5)
  assert v.status == 'PASS', v.summary


def test_a_zero_initialised_output_layer_is_not_symmetric_init():
  order, _, _, params = measured(models.MLP(num_classes=4, width=16))
  params[order[-1]]['kernel'] = jnp.zeros_like(params[order[-1]]['kernel'])
  assert inside.symmetric_init(params, order, 0.5).status == 'PASS'


def test_update_ratios_are_measured_per_layer_from_a_copy_before_each_recorded_step():
  model = models.MLP(num_classes=4, width=16)
  params = model.init(KEY, jnp.ones((1, 16)))['params']
  hook = probes.UpdateRatios(['Dense_0', 'Dense_1', 'Dense_2'], every=2)
  state = state_lib.TrainState(jnp.zeros((), jnp.int32), params, {}, {}, {})
  for step in range(1, 5):
    grown = jax.tree.map(lambda w: w * (1.0 + 0.01 * step), state.params)
    state = state.replace(params=grown)
    hook(step, state)
  steps, series = hook.series()
  assert steps == [2, 4]
  # step s multiplies every weight by 1 + 0.01 s: the update at step 2 is 0.02 of the weights
  # before it, at step 4 0.04 (steps 1 and 3 are not recorded)
  np.testing.assert_allclose(series['Dense_0'], [0.02, 0.04], rtol=1e-4)
