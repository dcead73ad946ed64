"""Users' Flax NNX models (`model.name=pkg.mod:Factory` taking `rngs`): an NNX CNN with
BatchNorm and Dropout trains, resumes bit-exactly, warm-starts, runs in bfloat16, passes
sanity; a planted NNX bug (BatchNorm on batch statistics in eval mode) is caught."""
import jax
import numpy as np
import pytest

from conftest import train_and_evaluate
from recipe_jax.engine import experiment
from recipe_jax.stages import sanity
from test_sanity_stage import CHECKS, sanity_config

NNX_CNN = 'helpers.nnx_models:CNN'


@pytest.fixture
def nnx_config(small_config):
  small_config.model.name = NNX_CNN
  small_config.optimizer.learning_rate = 3e-3
  return small_config


def test_an_nnx_model_keeps_params_and_batch_stats_and_switches_mode(nnx_config):
  exp = experiment.build(nnx_config)
  state = exp.initial_state()
  assert set(state.params['nnx']) == {'conv1', 'conv2', 'head', 'norm'}
  assert set(state.batch_stats['nnx']['norm']) == {'mean', 'var'}
  x = exp.dataset.x_val[:16]
  apply = exp.apply_fn(state)
  eval_logits = np.asarray(apply(state.params, x, False))
  np.testing.assert_allclose(np.asarray(apply(state.params, x[:4], False)), eval_logits[:4],
                             atol=1e-5)  # eval mode: running statistics, no dropout
  assert not np.allclose(np.asarray(apply(state.params, x, True)), eval_logits, atol=1e-3)


def test_an_nnx_model_trains_and_resumes_bit_exactly(nnx_config, tmp_path):
  straight = train_and_evaluate(nnx_config, tmp_path / 'straight')
  assert straight['eval_accuracy'] > 0.3  # it learns (10 classes)
  nnx_config.num_train_steps = 30
  train_and_evaluate(nnx_config, tmp_path / 'resumed')
  nnx_config.num_train_steps = 60
  resumed = train_and_evaluate(nnx_config, tmp_path / 'resumed')
  assert resumed['resumed_from_step'] == 30
  assert resumed['params_sha256'] == straight['params_sha256']
  assert straight['history'][-1]['train_loss'] < straight['history'][0]['train_loss']


def test_dropout_follows_the_pipelines_dropout_stream(nnx_config):
  exp = experiment.build(nnx_config)
  state = exp.initial_state()
  x = exp.dataset.x_val[:16]
  draw = lambda key: np.asarray(exp.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, x, train=True,
      rngs={'dropout': key}, mutable=['batch_stats'])[0])
  np.testing.assert_array_equal(draw(jax.random.key(1)), draw(jax.random.key(1)))
  assert not np.allclose(draw(jax.random.key(1)), draw(jax.random.key(2)))


def test_an_nnx_model_warm_starts_and_computes_in_bfloat16(nnx_config, tmp_path):
  source = train_and_evaluate(nnx_config, tmp_path / 'source')
  nnx_config.compute_dtype = 'bfloat16'
  nnx_config.init_from = str(tmp_path / 'source')
  tuned = train_and_evaluate(nnx_config, tmp_path / 'tuned')
  assert len(tuned['init_from']['loaded']) == 10  # 8 params and BatchNorm's 2 statistics
  assert not tuned['init_from']['fresh']
  assert tuned['eval_accuracy'] > source['eval_accuracy'] - 0.1


def test_sanity_passes_an_nnx_model_and_catches_a_planted_nnx_bug(data_dir, tmp_path):
  correct = sanity.run(sanity_config(data_dir, **{'model.name': NNX_CNN}), str(tmp_path / 'ok'))
  assert {v.check: v.status for v in correct.verdicts} == {c: 'PASS' for c in CHECKS}
  planted = sanity_config(data_dir, **{'model.name': 'helpers.nnx_models:BatchStatsInEval'})
  found = {v.check: v.status for v in sanity.run(planted, str(tmp_path / 'bug')).verdicts}
  assert found['batch_dependency'] == 'FAIL', found
