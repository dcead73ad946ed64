"""stage='overfit': trusted settings, and a verdict on fitting the whole training split."""
import json

import numpy as np
import pytest

from recipe_jax.report import results as report
from recipe_jax.errors import ChecksFailed
from recipe_jax.stages import overfit


def small_problem(tmp_path, config):
  """64 examples with random labels: memorisable by an MLP, not by a linear model."""
  rng = np.random.default_rng(0)
  path = tmp_path / 'random_labels.npz'
  np.savez(path, x_train=rng.standard_normal((72, 16)).astype(np.float32),
           y_train=rng.integers(0, 4, 72), x_test=rng.standard_normal((8, 16)).astype(np.float32),
           y_test=rng.integers(0, 4, 8))
  config.stage = 'overfit'
  config.dataset.name = f'npz:{path}'
  config.dataset.val_fraction = 0.1
  config.optimizer.learning_rate = 3e-4
  config.batch_size = 16
  config.num_train_steps = 1500
  config.eval_every_steps = config.checkpoint_every_steps = 1500
  return config


def verdicts(workdir):
  with open(workdir / 'overfit' / 'verdicts.json') as f:
    return {v['check']: v for v in json.load(f)}


def test_a_big_enough_model_fits_and_passes(small_config, tmp_path):
  config = small_problem(tmp_path, small_config)
  overfit.run(config, str(tmp_path / 'mlp'))
  result = verdicts(tmp_path / 'mlp')
  assert result['trusted_defaults']['status'] == 'PASS'
  assert result['fits_training_set']['status'] == 'PASS'
  assert result['fits_training_set']['evidence']['train_split_accuracy'] >= 0.99


def test_a_too_small_model_fails_with_the_capacity_to_try(small_config, tmp_path):
  config = small_problem(tmp_path, small_config)
  config.model.name, config.model.width = 'mlp', 2
  config.optimizer.learning_rate = 1e-3  # not trusted: said so, but still judged
  failed = overfit.run(config, str(tmp_path / 'narrow'))
  with pytest.raises(ChecksFailed, match='fits_training_set'):
    report.raise_if_failed(failed, str(tmp_path / 'narrow'))
  assert 'does not fit' in failed.verdicts[1].summary
  result = verdicts(tmp_path / 'narrow')
  assert result['trusted_defaults']['status'] == 'WARN'
  assert 'optimizer.learning_rate=0.001' in result['trusted_defaults']['summary']
  assert result['fits_training_set']['status'] == 'FAIL'
  assert '--config.model.width=4' in result['fits_training_set']['summary']
