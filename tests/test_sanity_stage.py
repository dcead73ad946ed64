"""The sanity stage on planted training bugs: each makes its check FAIL; the correct model
PASSes every check."""
import json
import os

import numpy as np

import pytest
from conftest import REPO, as_flags, load_config, run_main
from recipe_jax.engine import experiment
from recipe_jax.report import results as report
from recipe_jax.errors import ChecksFailed
from recipe_jax.stages import sanity

CHECKS = (*sanity.CHECKS, 'diagnosis')

# planted bug -> (config overrides, the check that must FAIL)
PLANTED = {
    'mixes examples across the batch': ({'model.name': 'helpers.planted_bugs:MixesBatch'},
                                        'batch_dependency'),
    'softmax before a logits loss': ({'model.name': 'helpers.planted_bugs:SoftmaxOutput'},
                                     'overfit_one_batch'),
    'labels permuted against inputs': ({'loss': 'helpers.planted_bugs:labels_rolled_loss'},
                                       'dumb_baselines'),
    'layer output multiplied by zero': ({'model.name': 'helpers.planted_bugs:DeadLayer'}, 'gradients'),
    'final layer initialised 100x': ({'model.name': 'helpers.planted_bugs:FinalLayer100x'},
                                     'loss_at_init'),
    'dropout with a fixed mask in eval': ({'model.name': 'helpers.planted_bugs:FixedMaskInEval'},
                                          'eval_consistency'),
    'train-mode noise from numpy': ({'model.name': 'helpers.planted_bugs:HostNoiseInTrain'},
                                    'eval_consistency'),
    'input pipeline does not normalise': ({'dataset.name': 'digits', 'dataset.normalize': False,
                                           'model.name': 'mlp', 'batch_size': 64},
                                          'inputs_before_net'),
}


def sanity_config(data_dir, **overrides):
  """configs/mnist1d/sanity.py with shorter runs (the checks' thresholds unchanged)."""
  config = load_config('configs/mnist1d/sanity.py')
  config.dataset.data_dir = data_dir
  config.sanity.steps = 200
  config.sanity.overfit_steps = 200
  config.sanity.seed_steps = 3
  config.sanity.dynamics_every = 50
  config.update_from_flattened_dict(overrides)
  return config


def statuses(workdir):
  with open(os.path.join(workdir, 'sanity', 'verdicts.json')) as f:
    return {v['check']: v['status'] for v in json.load(f)}


def test_correct_model_passes_every_check_and_writes_the_report(data_dir, tmp_path):
  verdicts = sanity.run(sanity_config(data_dir), str(tmp_path)).verdicts
  assert {v.check: v.status for v in verdicts} == {check: 'PASS' for check in CHECKS}
  assert statuses(tmp_path) == {check: 'PASS' for check in CHECKS}
  out = tmp_path / 'sanity'
  report = (out / 'report.md').read_text()
  for picture in ('loss_at_init', 'inputs_before_net', 'batch_dependency', 'baselines',
                  'training_loss', 'prediction_dynamics', 'overfit_one_batch',
                  'overfit_predictions'):
    assert (out / f'{picture}.png').stat().st_size > 1000
    assert f'({picture}.png)' in report


@pytest.mark.parametrize('bug', PLANTED)
def test_planted_bug_fails_its_check(bug, data_dir, tmp_path):
  overrides, check = PLANTED[bug]
  result = sanity.run(sanity_config(data_dir, **overrides), str(tmp_path))
  with pytest.raises(ChecksFailed, match=check):
    report.raise_if_failed(result, str(tmp_path))
  assert statuses(tmp_path)[check] == 'FAIL'


def test_correct_user_model_passes_every_check(data_dir, tmp_path):
  """The planted models' bug-free twin, so a FAIL above is the bug, not the MLP itself."""
  verdicts = sanity.run(sanity_config(data_dir, **{'model.name': 'helpers.planted_bugs:Correct'}),
                        str(tmp_path)).verdicts
  assert [v.check for v in verdicts if v.status != 'PASS'] == []


def test_cli_exits_1_on_a_failed_check(data_dir, tmp_path):
  config = sanity_config(data_dir, **{'model.name': 'helpers.planted_bugs:DeadLayer'})
  result = run_main(tmp_path, '--config=configs/mnist1d/sanity.py', *as_flags(config),
                    env={'PYTHONPATH': os.path.join(REPO, 'tests')})
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'gradients' in result.stderr.splitlines()[-1]
  assert statuses(tmp_path)['gradients'] == 'FAIL'


def test_inputs_before_net_show_the_augmentation(data_dir):
  config = sanity_config(data_dir)
  raw_x, raw_y, raw_rows = sanity._first_batch(config, experiment.build(config))
  config.augment.shift = 5
  x, y, rows = sanity._first_batch(config, experiment.build(config))
  assert (rows == raw_rows).all()
  assert not (x == raw_x).all() and (y == raw_y).all()


USER_CODE = {'PYTHONPATH': os.path.join(REPO, 'tests')}


def test_model_that_breaks_in_eval_mode_fails_the_checks_and_names_the_cause(data_dir, tmp_path):
  """Regression: this model crashed the stage with a Flax traceback and wrote no verdicts."""
  config = sanity_config(data_dir, **{'model.name': 'helpers.user_models:BatchStatsInEval'})
  result = run_main(tmp_path, '--config=configs/mnist1d/sanity.py', *as_flags(config),
                    env=USER_CODE)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  with open(tmp_path / 'sanity' / 'verdicts.json') as f:
    verdicts = {v['check']: v for v in json.load(f)}
  assert list(verdicts) == list(CHECKS)
  assert verdicts['inputs_before_net']['status'] == 'PASS'  # needs no model: still runs
  assert verdicts['init_well']['status'] == 'FAIL'
  assert 'changes its variables in eval mode' in verdicts['init_well']['summary']
  assert 'use_running_average' in verdicts['init_well']['summary']
  assert 'failed in eval mode' in verdicts['init_well']['summary']
  assert (tmp_path / 'sanity' / 'report.md').exists()


def test_model_that_breaks_only_in_train_mode_fails_the_training_checks(data_dir, tmp_path):
  config = sanity_config(data_dir, **{'model.name': 'helpers.user_models:RaisesInTrain',
                                      'model.log_prior_output_bias': False})
  verdicts = {v.check: v for v in sanity.run(config, str(tmp_path)).verdicts}
  for check in ('fixed_seed', 'loss_at_init', 'gradients', 'overfit_one_batch'):
    assert verdicts[check].status == 'FAIL', check
    assert 'failed in train mode' in verdicts[check].summary, verdicts[check].summary
  assert verdicts['init_well'].status == 'WARN'  # eval mode works; init well is off
  assert verdicts['inputs_before_net'].status == 'PASS'


def test_sanity_evaluates_with_the_configured_loss(data_dir, tmp_path):
  """Regression: validation losses were cross-entropy whatever config.loss said."""
  config = sanity_config(data_dir, **{'loss': 'helpers.planted_bugs:doubled_cross_entropy'})
  verdicts = {v.check: v for v in sanity.run(config, str(tmp_path)).verdicts}
  table = verdicts['dumb_baselines'].evidence['validation']
  exp = experiment.build(config)
  prior = np.bincount(exp.dataset.y_train, minlength=10) / len(exp.dataset.y_train)
  prior_cross_entropy = -np.mean(np.log(prior[exp.dataset.y_val]))
  assert table['class prior']['loss'] == pytest.approx(2 * prior_cross_entropy, rel=1e-5)
  state = exp.initial_state()
  doubled = exp.evaluate(state, exp.dataset.x_val, exp.dataset.y_val)
  config.loss = 'cross_entropy'
  plain = experiment.build(config).evaluate(state, exp.dataset.x_val, exp.dataset.y_val)
  assert doubled['loss'] == pytest.approx(2 * plain['loss'], rel=1e-5)
  assert doubled['accuracy'] == plain['accuracy']


def test_evidence_names_rows_of_the_source_split(data_dir, tmp_path):
  config = sanity_config(data_dir)
  verdicts = {v.check: v for v in sanity.run(config, str(tmp_path)).verdicts}
  exp = experiment.build(config)
  shown = verdicts['prediction_dynamics'].evidence
  assert shown['source_split'] == 'train'  # validation is carved from the source train split
  source_x = exp.dataset.x_val[:len(shown['source_rows'])]
  full = np.concatenate([exp.dataset.x_train, exp.dataset.x_val])
  rows = np.concatenate([exp.dataset.train_rows, exp.dataset.val_rows])
  by_row = full[np.argsort(rows)]  # the normalised source train split, in file order
  np.testing.assert_array_equal(by_row[shown['source_rows']], source_x)
