"""Reading the nonlinearities from the model's traced program: through pooling, dropout and
residual sums, composite functions (SiLU, GELU) and gates named whole, statistics (a variance
clamped at 0) not taken for ReLUs, and what cannot be seen into said so."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from helpers import zoo
from recipe_jax.diagnose import program as program_lib

KEY = jax.random.key(0)


def read(module, shape=(8, 16)):
  x = jnp.zeros(shape)
  variables = module.init({'params': KEY, 'dropout': KEY}, x, train=False)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return program_lib.read(module, variables, x, KEY)


def sites(program):
  return [(s.producer, s.kind, s.judged) for s in program.sites]


def test_relu_is_read_through_global_average_pooling_and_dropout():
  """The issue's user CNN: the value entering the head is an average of ReLU features, not a
  'sigmoid-like' value in (0, 1)."""
  program = read(zoo.GapDropoutCNN(num_classes=4))
  assert sites(program) == [('Conv_0', 'relu', 'dead'), ('Conv_1', 'relu', 'dead')]
  head = program.layer_inputs['Dense_0']
  assert head['kind'] == 'relu' and head['identified']
  assert set(head['through']) == {'mean pooling', 'dropout'}
  assert head['sites'] == ['Conv_1 relu']


def test_max_pooling_and_residual_sums_are_seen_through():
  assert program_lib_through(zoo.MaxPoolCNN(num_classes=4), 'Dense_0') == {'max pooling', 'dropout'}
  program = read(zoo.ResidualMLP(num_classes=4))
  assert program.layer_inputs['Dense_4'] == {
      'kind': 'linear', 'through': ['normalisation', 'residual sum'], 'sites': [], 'unknown': [],
      'identified': True}


def program_lib_through(module, layer):
  return set(read(module).layer_inputs[layer]['through'])


class _Composite(nn.Module):
  which: str  # the activation between the two Dense layers

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(16)(x)
    if self.which == 'silu':
      h = nn.silu(h)
    elif self.which == 'hand silu':
      h = h * jax.nn.sigmoid(h)
    elif self.which == 'gelu':
      h = nn.gelu(h)  # tanh approximation: 0.5 x (1 + tanh(...))
    elif self.which == 'exact gelu':
      h = nn.gelu(h, approximate=False)  # an erf
    elif self.which == 'glu':
      h = nn.glu(h)
    elif self.which == 'gate':
      h = nn.Dense(16)(x) * nn.sigmoid(h)
    elif self.which == 'tanh':
      h = jnp.tanh(h)
    elif self.which == 'sigmoid':
      h = nn.sigmoid(h)
    elif self.which == 'hand relu':
      h = jnp.maximum(h, 0.0)
    elif self.which == 'hand relu, zero first':
      h = jnp.maximum(0.0, h)
    return nn.Dense(4)(h)


@pytest.mark.parametrize('which, kind, judged', [
    ('silu', 'silu', None), ('hand silu', 'silu', None), ('gelu', 'gelu', None),
    ('exact gelu', 'gelu', None), ('glu', 'glu', None), ('gate', 'sigmoid gate', None),
    ('tanh', 'tanh', 'saturation'), ('sigmoid', 'sigmoid', 'saturation'),
    ('hand relu', 'relu', 'dead'), ('hand relu, zero first', 'relu', 'dead')])
def test_functions_are_named_whole_and_only_saturating_ones_are_judged(which, kind, judged):
  """SiLU contains a logistic and tanh-GELU a tanh: neither saturates, so neither is judged;
  a sigmoid that multiplies another activation is a gate."""
  program = read(_Composite(which))
  found = [(s.kind, s.judged) for s in program.sites]
  assert found == [(kind, judged)], found
  assert program.layer_inputs[program.order[-1]]['kind'] == kind


def test_normalisation_statistics_are_not_relus():
  """BatchNorm and LayerNorm clamp their variance with max(0, var): not an activation."""
  for module in (zoo.BatchNormMLP(num_classes=4), zoo.GeluLayerNormMLP(num_classes=4)):
    assert all(s.kind != 'relu' or s.producer for s in read(module).sites)
  assert [s.kind for s in read(zoo.GeluLayerNormMLP(num_classes=4)).sites] == ['gelu', 'gelu']
  assert [s.kind for s in read(zoo.BatchNormMLP(num_classes=4)).sites] == ['relu', 'relu']


def test_a_layer_after_a_loop_is_not_identified_and_says_why():
  program = read(zoo.LSTMClassifier(num_classes=4), (8, 10))
  head = program.layer_inputs['Dense_0']
  assert not head['identified'] and head['unknown'] == ['scan']
  assert len(program.unseen) == 8  # the LSTM cell's projections, inside the scan


def test_squeeze_excitation_gate_and_attention():
  program = read(zoo.SqueezeExciteCNN(num_classes=4))
  assert ('Dense_0', 'sigmoid gate', None) in sites(program)
  program = read(zoo.TransformerClassifier(num_classes=4))
  out = program.layer_inputs['MultiHeadDotProductAttention_0/out']
  assert out['kind'] == 'linear' and set(out['through']) >= {'attention', 'softmax'}


def test_every_zoo_model_is_read_and_most_layers_identified():
  """At least 90% of the zoo's recorded layers (not those that read the raw input) have their
  input's nonlinearity read from the program; the layers inside a recurrent cell's loop are
  not recorded at all (activations_seen names them), and the heads after the loop are the
  only layers not identified."""
  read_layers, identified, inside_loops, unidentified = 0, 0, 0, []
  for name in zoo.LINEN:
    program = read(getattr(zoo, name)(num_classes=4), (8, 8, 8, 1))
    for layer, found in program.layer_inputs.items():
      if found['kind'] != 'input':
        read_layers, identified = read_layers + 1, identified + found['identified']
        if not found['identified']:
          unidentified.append(f'{name}/{layer}')
    inside_loops += len(program.unseen)
  assert identified / read_layers >= 0.9, (identified, read_layers)
  assert unidentified == ['LSTMClassifier/Dense_0', 'GRUMeanClassifier/Dense_1']
  assert inside_loops == 8 + 6


def test_a_site_is_measured_at_its_activation_operand_whichever_side_it_is_on():
  """max(0.0, h): the gradient passing the ReLU is measured on h, not on the constant."""
  from recipe_jax.diagnose import probes
  from recipe_jax.model import losses
  for which in ('hand relu', 'hand relu, zero first'):
    module = _Composite(which)
    x = jax.random.normal(KEY, (64, 16))
    variables = {'params': module.init(KEY, x)['params'], 'batch_stats': {}}
    program = probes.read_program(module, variables, x, KEY)
    found = probes.measure(module, losses.cross_entropy, program, program.order, program.order,
                           variables['params'], {}, x, jnp.arange(64) % 4, KEY)
    stats = found['sites'][program.sites[0].name]
    assert 0.5 < float(stats['gradient_share']) < 0.9, (which, stats)  # half the units pass
    assert abs(float(stats['preactivation_mean'])) < 0.5


class _BackToBack(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(nn.Dense(16)(h))  # a forgotten activation: Dense_2 reads Dense_1 directly


def test_a_layer_reading_another_layer_s_output_directly_is_linear():
  """Regression: the walk went through the previous layer and called the input 'relu'."""
  program = read(_BackToBack())  # Linen names Dense(4) Dense_1: it is built first
  assert program.order == ['Dense_0', 'Dense_2', 'Dense_1']
  assert program.layer_inputs['Dense_2']['kind'] == 'relu'
  assert program.layer_inputs['Dense_1'] == {'kind': 'linear', 'through': [], 'sites': [],
                                              'unknown': [], 'identified': True}
