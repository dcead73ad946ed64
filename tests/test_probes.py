"""Looking inside the net: layers recorded for Linen and NNX models without touching their code,
and the verdicts that name a layer and a cause on planted models, near each threshold, and stay
quiet on clean ones."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import nnx_models as user_nnx, planted_bugs, zoo
from recipe_jax.diagnose import inside, probes
from recipe_jax.engine import state as state_lib
from recipe_jax.model import layers, losses, models, nnx_models
from recipe_jax.verdicts import Verdict

KEY = jax.random.key(3)


def measured(model, example_shape=(16,), batch=32, params=None, seed=0):
  """(program, measurements at these params (default: init), params)."""
  x = jax.random.normal(jax.random.key(seed), (batch, *example_shape))
  y = jnp.arange(batch) % 4
  kwargs = {'train': False} if models.takes_train_flag(model) else {}
  variables = model.init({'params': jax.random.key(seed + 1), 'dropout': KEY}, x[:1], **kwargs)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  if params is not None:
    variables = {**variables, 'params': params}
  program = probes.read_program(model, variables, x, KEY)
  order, unseen = probes.layer_order(model, variables, x, KEY)
  found = probes.measure(model, losses.cross_entropy, program, order, order + unseen,
                         variables['params'], variables['batch_stats'], x, y, KEY)
  return program, found, variables['params']


def test_linen_layers_are_recorded_in_call_order_with_the_nonlinearity_between_them():
  program, found, _ = measured(planted_bugs._Deep(4, 'tanh', depth=2))
  assert program.order == ['Dense_0', 'Dense_1', 'Dense_2'] and program.unseen == []
  assert {k: v['kind'] for k, v in program.layer_inputs.items()} == {
      'Dense_0': 'input', 'Dense_1': 'tanh', 'Dense_2': 'tanh'}
  assert set(found['grad_norm']) == set(program.order)
  assert [s.name for s in program.judged('saturation')] == ['Dense_0 tanh', 'Dense_1 tanh']


def test_nnx_layers_are_recorded_through_the_bridge():
  model = nnx_models.NNXModel(user_nnx.CNN, 4)
  program, found, _ = measured(model)
  assert program.order == ['nnx/conv1', 'nnx/conv2', 'nnx/head'] and program.unseen == []
  assert all(found['grad_norm'][k] > 0 for k in program.order)
  assert program.layer_inputs['nnx/head']['kind'] == 'relu'


def test_layers_in_an_nnx_list_are_found_by_their_integer_index():
  """Regression: 'nnx/ups/0' was looked up as the key '0' of a tree whose key is 0, and every
  check that reads a layer's kernel crashed on a healthy model."""
  program, found, params = measured(nnx_models.NNXModel(zoo.NnxResidualGelu_mnist1d, 4),
                                    example_shape=(40,))
  assert 'nnx/ups/0' in program.order and found['grad_norm']['nnx/ups/0'] > 0
  assert [s.kind for s in program.sites] == ['gelu', 'gelu']


def test_layers_inside_a_loop_are_named_as_not_seen_and_still_get_gradients():
  program, found, params = measured(models.GRU(num_classes=4, width=4))
  assert program.order == ['Dense_0'] and len(program.unseen) == 6 * 2  # 6 projections a direction
  v = inside.activations_seen(program.order, program.unseen, program)
  assert v.status == 'WARN' and 'not seen' in v.summary and 'GRUCell_0/hn' in v.summary
  assert set(layers.kernel_layers(params)) == set(program.order + program.unseen)
  assert all(found['grad_norm'][k] > 0 for k in program.unseen)


def test_a_model_with_every_layer_seen_passes_activations_seen():
  program, _, _ = measured(models.MLP(num_classes=4, width=16))
  v = inside.activations_seen(program.order, program.unseen, program)
  assert v.status == 'PASS' and 'before 2 of 2 layers read from the program' in v.summary


def test_vanishing_gradients_are_named_with_the_layers():
  program, found, _ = measured(planted_bugs.DeepSigmoid(4))
  v = inside.gradient_flow(found, None, program.order, 1e3, 10)
  assert v.status == 'FAIL' and v.summary.startswith('vanishing gradients')
  assert 'Dense_0' in v.summary and 'Dense_10' in v.summary


def test_exploding_gradients_are_named():
  program, found, _ = measured(planted_bugs.ExplodingInit(4))
  v = inside.gradient_flow(found, None, program.order, 1e3, 10)
  assert v.status == 'FAIL' and v.summary.startswith('exploding gradients'), v.summary


@pytest.mark.parametrize('model', [models.MLP(num_classes=4, width=32), models.CNN1D(num_classes=4),
                                   models.Linear(num_classes=4)])
def test_clean_models_have_no_finding_inside(model):
  program, found, params = measured(model, batch=64)
  assert inside.gradient_flow(found, found, program.order, 1e3, 10).status == 'PASS'
  assert inside.dead_units(program, found, found, params, 1e-3, 0.5, 0.1).status == 'PASS'
  assert inside.saturation(program, found, found, 0.5, 0.1).status == 'PASS'
  assert inside.symmetric_init(params, program.order, 0.5).status == 'PASS'


class _DataAxisBatchNorm(nn.Module):
  """BatchNorm averaging its statistics over the mesh's data axis, as the built-in ResNets'."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Conv(8, (3, 3), use_bias=False)(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, axis_name='data' if train else None)(h))
    return nn.Dense(self.num_classes)(h.mean(axis=(1, 2)))


def test_measuring_through_the_program_gives_the_model_s_own_loss_and_gradients():
  """The flattened program is the model: the same loss and kernel gradients as applying the
  model itself (BatchNorm averaging over the data axis, as the ResNets' do; a user's CNN with
  dropout)."""
  for model, shape in ((_DataAxisBatchNorm(4), (8, 8, 3)), (zoo.GapDropoutCNN(4), (16,))):
    x, y = jax.random.normal(jax.random.key(0), (16, *shape)), jnp.arange(16) % 4
    kwargs = {'train': False} if models.takes_train_flag(model) else {}
    variables = model.init({'params': jax.random.key(1), 'dropout': KEY}, x[:1], **kwargs)
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    program = probes.read_program(model, variables, x, KEY)
    assert program is not None and program.sites
    through, direct = (probes.measure(model, losses.cross_entropy, p, program.order,
                                      program.order, variables['params'],
                                      variables['batch_stats'], x, y, KEY)
                       for p in (program, None))
    np.testing.assert_allclose(through['loss'], direct['loss'], rtol=1e-6)
    for k in program.order:
      np.testing.assert_allclose(through['grad_norm'][k], direct['grad_norm'][k], rtol=1e-5)
    assert direct['sites'] == {}


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
    # one layer over the threshold: the words do not claim every layer
    assert 'over 10x in 1 of 3 layers' in v.summary and 'at every layer' not in v.summary
    assert v.evidence['layers_over'] == ['a']


def test_every_layer_over_its_weights_is_called_an_init_too_large_at_every_layer():
  found = {'grad_norm': {k: 20.0 for k in 'abc'}, 'weight_norm': {k: 1.0 for k in 'abc'}}
  v = inside.gradient_flow(found, None, ['a', 'b', 'c'], 1e3, 10)
  assert v.status == 'FAIL' and 'over 10x in 3 of 3 layers' in v.summary
  assert 'initialised too large multiply activations and gradients at every layer' in v.summary


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
  program, init, params = measured(model, batch=64)
  params = jax.tree.map(lambda a: a, params)
  params['Dense_0']['bias'] = jnp.asarray(bias, jnp.float32)
  _, found, _ = measured(model, batch=64, params=params)
  return program, found, params


@pytest.mark.parametrize('dead, status', [(36, 'FAIL'), (28, 'PASS')])
def test_dead_units_threshold_names_the_layer_and_the_negative_bias(dead, status):
  bias = np.zeros(64)
  bias[:dead] = -1e3  # far below any pre-activation: dead for every example
  program, found, params = dead_at(bias)
  assert [s.name for s in program.judged('dead')] == ['Dense_0 relu']
  v = inside.dead_units(program, found, None, params, 1e-3, 0.5, 0.1)
  assert v.status == status
  assert v.evidence['layers']['Dense_0 relu']['init'] == pytest.approx(dead / 64)
  if status == 'FAIL':
    assert "Dense_0's ReLU units" in v.summary and 'large negative bias' in v.summary


def test_units_quiet_at_init_that_the_short_run_revives_are_not_dead():
  program, dead, params = dead_at(np.full(64, -1e3))
  _, alive, _ = dead_at(np.zeros(64))
  assert inside.dead_units(program, dead, alive, params, 1e-3, 0.5, 0.1).status == 'PASS'
  v = inside.dead_units(program, dead, dead, params, 1e-3, 0.5, 0.1)  # still dead after
  assert v.status == 'FAIL' and 'large negative bias' in v.summary


@pytest.mark.parametrize('dead, status', [(64, 'FAIL'), (63, 'FAIL'), (60, 'WARN'), (55, 'PASS')])
def test_units_that_die_during_the_short_run_warn_and_fail_once_no_gradient_passes(dead, status):
  """Half the units dying under Adam is common and harmless; nearly all (90%) is a WARN; FAIL
  only once the gradient through them has collapsed (64 dead: none passes; 63: the one alive
  passes 8% of it, under the 10% threshold; 60: the four alive pass more)."""
  program, alive, params = dead_at(np.zeros(64))
  bias = np.zeros(64)
  bias[:dead] = -1e3
  _, after, _ = dead_at(bias)
  v = inside.dead_units(program, alive, after, params, 0.5, 0.5, 0.1)
  assert v.status == status, v.summary
  if status != 'PASS':
    assert 'died during the short run' in v.summary and '0.5' in v.summary
    assert inside.died_because(0.5) in v.summary  # a likely cause, not the only one
    share = after['sites']['Dense_0 relu']['gradient_share']
    assert (share < 0.1) == (status == 'FAIL')


@pytest.mark.parametrize('share, status', [(0.11, 'WARN'), (0.09, 'FAIL')])
def test_dead_units_after_the_short_run_either_side_of_the_gradient_share(share, status):
  program, alive, params = dead_at(np.zeros(64))
  after = {'sites': {'Dense_0 relu': {'dead_fraction': 0.95, 'gradient_share': share,
                                      'saturated_fraction': 0.0, 'preactivation_std': 1.0}}}
  v = inside.dead_units(program, alive, after, params, 1e-2, 0.5, 0.1)
  assert v.status == status and f'{share:.0%} of the gradient arriving' in v.summary


def test_saturated_tanh_is_named():
  program, found, _ = measured(planted_bugs.SaturatedTanh(4))
  v = inside.saturation(program, found, None, 0.5, 0.1)
  assert v.status == 'FAIL' and "Dense_0's tanh outputs are saturated at init" in v.summary


@pytest.mark.parametrize('scale, status', [(0.05, 'PASS'), (30.0, 'FAIL')])
def test_saturation_near_its_threshold(scale, status):
  """One tanh layer over inputs scaled so that about a third / two thirds of its outputs lie
  beyond 0.99."""
  model = planted_bugs._Deep(4, 'tanh', depth=1)
  program, found, params = measured(model, batch=256)
  params['Dense_0']['kernel'] = params['Dense_0']['kernel'] * scale
  _, found, _ = measured(model, batch=256, params=params)
  v = inside.saturation(program, found, None, 0.5, 0.1)
  assert v.status == status, v.summary


def site_measurement(saturated, share):
  return {'sites': {'Dense_0 tanh': {'saturated_fraction': saturated, 'gradient_share': share,
                                     'dead_fraction': 0.0, 'preactivation_std': 1.0}}}


@pytest.mark.parametrize('saturated, share, status', [
    (0.52, 0.40, 'PASS'),  # a trained tanh net: many units at +-1, the gradient still flows
    (0.52, 0.11, 'PASS'), (0.52, 0.09, 'FAIL'),  # either side of min_gradient_share
    (0.48, 0.01, 'PASS'),  # collapsed but under max_saturated_fraction
    (0.95, 0.02, 'FAIL')])
def test_saturation_after_the_short_run_fails_only_when_the_gradient_through_it_collapsed(
    saturated, share, status):
  program, _, _ = measured(planted_bugs._Deep(4, 'tanh', depth=1))
  v = inside.saturation(program, site_measurement(0.01, 0.7), site_measurement(saturated, share),
                        0.5, 0.1)
  assert v.status == status, v.summary
  if status == 'FAIL':
    assert 'after the short run' in v.summary and f'only {share:.0%} of the gradient' in v.summary
  elif saturated > 0.5:
    assert 'still passes' in v.summary and 'a trained tanh net' in v.summary


def test_constant_and_zero_init_are_named_as_symmetric():
  program, _, params = measured(planted_bugs.ConstantInit(4))
  order = program.order
  v = inside.symmetric_init(params, order, 0.5)
  assert v.status == 'FAIL' and "Dense_0's 64 units start with identical" in v.summary
  params['Dense_0']['kernel'] = jnp.zeros_like(params['Dense_0']['kernel'])
  v = inside.symmetric_init(params, order, 0.5)  # zero, and feeding Dense_1's copied rows
  assert v.status == 'FAIL' and "Dense_0's 64 units start with all zero" in v.summary


def test_copies_that_feed_the_next_layer_through_different_weights_are_not_symmetric():
  """A zero-initialised branch (ReZero, LoRA's B) parts after one step: its units' outgoing
  weights differ, so do their gradients."""
  program, _, params = measured(planted_bugs._Deep(4, 'tanh', depth=2))
  order = program.order
  params['Dense_0']['kernel'] = jnp.zeros_like(params['Dense_0']['kernel'])
  v = inside.symmetric_init(params, order, 0.5)
  assert v.status == 'PASS', v.summary


def test_a_zero_initialised_output_layer_is_not_symmetric_init():
  program, _, params = measured(models.MLP(num_classes=4, width=16))
  order = program.order
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


def test_a_program_that_cannot_be_read_is_said_not_judged_and_never_ruled_out():
  from recipe_jax.diagnose import diagnosis
  dead = inside.dead_units(None, {}, None, {}, 1e-3, 0.5, 0.1)
  saturated = inside.saturation(None, {}, None, 0.5, 0.1)
  assert dead.status == saturated.status == 'PASS' and 'not judged' in dead.summary
  seen = inside.activations_seen(['Dense_0', 'Dense_1'], [], None)
  assert seen.status == 'WARN' and 'could not be read' in seen.summary
  overfit = Verdict('overfit_one_batch', 'FAIL', '...', {})
  words = diagnosis.explain([overfit, dead, saturated])[-1].summary
  assert 'dead ReLUs' not in words and 'saturated units' not in words, words
