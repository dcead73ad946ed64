"""compute_dtype=bfloat16: float32 master weights and optimizer state, bfloat16 layers,
float32 logits, and the accuracy of float32 within seed noise."""
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from recipe_jax.engine import experiment
from recipe_jax.model import models
from recipe_jax.errors import UserError
from recipe_jax.engine import state as state_lib

from conftest import train_and_evaluate

sys.path.insert(0, os.path.dirname(__file__))  # for user_models


@pytest.mark.parametrize('name, example_shape', [
    ('linear', (40,)), ('mlp', (40,)), ('cnn1d', (40,)), ('gru', (40,)),
    ('cnn2d', (8, 8, 1)), ('resnet18', (16, 16, 3)),
])
def test_bfloat16_computes_in_bfloat16_on_float32_weights(name, example_shape):
  config = ml_collections.ConfigDict({'name': name, 'width': 8 if name == 'resnet18' else None})
  model = models.create(config, num_classes=5, compute_dtype='bfloat16')
  state = state_lib.init_state(model, optax.adam(1e-3), example_shape, seed=0,
                             output_bias=np.log(np.full(5, 0.2, np.float32)))
  dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))
            if hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  x = jax.random.normal(jax.random.key(1), (3, *example_shape))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits, inner = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(variables, x)
  assert logits.dtype == jnp.float32
  layer_outputs = [leaf.dtype for leaf in jax.tree.leaves(inner['intermediates'])]
  assert jnp.dtype(jnp.bfloat16) in layer_outputs


def test_a_user_model_without_a_dtype_argument_is_refused_in_bfloat16():
  config = ml_collections.ConfigDict({'name': 'helpers.user_models:TinyNet', 'width': None})
  with pytest.raises(UserError, match='takes no dtype argument'):
    models.create(config, num_classes=3, compute_dtype='bfloat16')


def test_bfloat16_training_reaches_float32_accuracy_within_seed_noise(small_config, tmp_path):
  """MNIST-1D CNN, 2 seeds each: the mean test accuracies differ by less than the seeds'
  spread allows (and bfloat16 really ran: its parameters differ from float32's)."""
  small_config.model.name = 'cnn1d'
  small_config.optimizer.learning_rate = 1e-2
  small_config.num_train_steps = 300
  small_config.eval_every_steps = small_config.checkpoint_every_steps = 300
  accuracy, shas = {}, {}
  for dtype in ('float32', 'bfloat16'):
    small_config.compute_dtype = dtype
    summaries = []
    for seed in (0, 1):
      small_config.seed = seed
      summaries.append(train_and_evaluate(small_config, str(tmp_path / dtype / str(seed))))
    accuracy[dtype] = np.array([s['test_accuracy'] for s in summaries])
    shas[dtype] = [s['params_sha256'] for s in summaries]
  assert accuracy['float32'].mean() > 0.6  # it learned
  noise = 3 * max(accuracy['float32'].std(), accuracy['bfloat16'].std(), 0.01)
  assert abs(accuracy['bfloat16'].mean() - accuracy['float32'].mean()) < noise
  assert shas['float32'] != shas['bfloat16']


def test_the_sanity_checks_run_in_the_configured_precision(small_config):
  small_config.compute_dtype = 'bfloat16'
  exp = experiment.build(small_config)
  assert exp.model.dtype == jnp.bfloat16
  state = exp.initial_state()
  path = models.find_output_bias(
      lambda p: state_lib.jitted_logits(exp.model)({'params': p}, exp.dataset.x_val[:8]),
      state.params, exp.dataset.num_classes, models.logits_rtol(exp.model))
  assert path is not None  # init well finds the output bias through bfloat16 logits
