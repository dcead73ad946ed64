"""config.init_from: warm start by name and shape, fresh heads reported, frozen parameters."""
import numpy as np
import pytest

from conftest import cli_flags, run_main, train_and_evaluate
from recipe_jax.data import datasets as data
from recipe_jax.engine import checkpoints, experiment
from recipe_jax.engine import warm_start
from recipe_jax.errors import UserError


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
  from recipe_jax.config import defaults
  c = defaults.get_config()
  c.dataset.name, c.dataset.data_dir = 'mnist1d', data_dir
  c.model.name, c.optimizer.learning_rate = 'mlp', 1e-2
  c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps = 60, 30, 30
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train_and_evaluate(c, workdir)
  return workdir


def source_params(run_dir, step=60):
  return checkpoints.read_state_as_numpy(f'{run_dir}/checkpoints/{step}')['params']


def test_loaded_parameters_equal_the_sources(small_config, pretrained):
  exp = experiment.build(small_config)
  state, report = warm_start.load(exp.initial_state(), pretrained, '', exp.tx)
  source = source_params(pretrained)
  for layer in source:
    for name, value in source[layer].items():
      np.testing.assert_array_equal(state.params[layer][name], value)
  assert report['fresh'] == {} and report['source'].endswith('checkpoints/60')
  skipped, report = warm_start.load(exp.initial_state(), pretrained, 'Dense_2', exp.tx)
  assert set(report['fresh']) == {'Dense_2/kernel', 'Dense_2/bias'}
  np.testing.assert_array_equal(skipped.params['Dense_2']['kernel'],
                                exp.initial_state().params['Dense_2']['kernel'])


@pytest.fixture
def three_class_npz(tmp_path, small_config):
  """MNIST-1D inputs with 3 classes: the same body, a head of another size."""
  full = data.load(small_config.dataset)
  path = tmp_path / 'three.npz'
  np.savez(path, x_train=full.x_train, y_train=full.y_train % 3, x_test=full.x_test,
           y_test=full.y_test % 3)
  return str(path)


def test_a_head_of_another_size_is_fresh_and_reported(small_config, pretrained, three_class_npz,
                                                      tmp_path):
  small_config.dataset.name = f'npz:{three_class_npz}'
  small_config.init_from = pretrained
  summary = train_and_evaluate(small_config, str(tmp_path / 'fine'))
  fresh = summary['init_from']['fresh']
  assert set(fresh) == {'Dense_2/kernel', 'Dense_2/bias'}
  assert fresh['Dense_2/kernel'] == 'shape (100, 10) in the source, (100, 3) here'
  assert 'Dense_0/kernel' in summary['init_from']['loaded']


def test_frozen_parameters_do_not_change_and_a_restart_resumes_its_own_checkpoints(
    small_config, pretrained, tmp_path):
  small_config.init_from, small_config.init_from_freeze = pretrained, 'Dense_0'
  small_config.num_train_steps = 30
  train_and_evaluate(small_config, str(tmp_path / 'fine'))
  small_config.num_train_steps = 60
  resumed = train_and_evaluate(small_config, str(tmp_path / 'fine'))
  assert resumed['resumed_from_step'] == 30 and resumed['init_from']['loaded']
  after = source_params(str(tmp_path / 'fine'))
  before = source_params(pretrained)
  np.testing.assert_array_equal(after['Dense_0']['kernel'], before['Dense_0']['kernel'])
  assert not np.array_equal(after['Dense_1']['kernel'], before['Dense_1']['kernel'])
  straight = train_and_evaluate(small_config, str(tmp_path / 'straight'))
  assert straight['params_sha256'] == resumed['params_sha256']


def test_nothing_to_load_is_an_error(small_config, pretrained, tmp_path):
  small_config.model.name = 'cnn1d'
  exp = experiment.build(small_config)
  with pytest.raises(UserError, match='no parameter matches by name and shape'):
    warm_start.load(exp.initial_state(), pretrained, '', exp.tx)
  with pytest.raises(UserError, match='no checkpoint there'):
    warm_start.load(exp.initial_state(), str(tmp_path), '', exp.tx)
  small_config.init_from_freeze = 'NoSuchLayer'
  with pytest.raises(UserError, match='match no parameter'):
    experiment.build(small_config).initial_state()


def test_a_wrong_init_from_path_is_one_line_exit_2(small_config, tmp_path):
  small_config.init_from = str(tmp_path / 'missing_run')
  result = run_main(tmp_path / 'run', *cli_flags(small_config))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('recipe_jax: error: init_from=')
