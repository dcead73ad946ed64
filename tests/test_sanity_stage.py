"""The sanity stage on planted training bugs: each makes its check FAIL; the correct model
PASSes every check."""
import json
import os

import pytest
from conftest import REPO, as_flags, load_config, run_main
from recipe_jax.errors import ChecksFailed
from recipe_jax.stages import sanity

CHECKS = ('fixed_seed', 'loss_at_init', 'init_well', 'inputs_before_net', 'batch_dependency',
          'gradients', 'dumb_baselines', 'decreasing_loss', 'prediction_dynamics',
          'overfit_one_batch', 'human_baseline')

# planted bug -> (config overrides, the check that must FAIL)
PLANTED = {
    'mixes examples across the batch': ({'model.name': 'planted_bugs:MixesBatch'},
                                        'batch_dependency'),
    'softmax before a logits loss': ({'model.name': 'planted_bugs:SoftmaxOutput'},
                                     'overfit_one_batch'),
    'labels permuted against inputs': ({'loss': 'planted_bugs:labels_rolled_loss'},
                                       'dumb_baselines'),
    'layer output multiplied by zero': ({'model.name': 'planted_bugs:DeadLayer'}, 'gradients'),
    'final layer initialised 100x': ({'model.name': 'planted_bugs:FinalLayer100x'},
                                     'loss_at_init'),
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
  verdicts = sanity.run(sanity_config(data_dir), str(tmp_path))
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
  with pytest.raises(ChecksFailed, match=check):
    sanity.run(sanity_config(data_dir, **overrides), str(tmp_path))
  assert statuses(tmp_path)[check] == 'FAIL'


def test_correct_user_model_passes_every_check(data_dir, tmp_path):
  """The planted models' bug-free twin, so a FAIL above is the bug, not the MLP itself."""
  verdicts = sanity.run(sanity_config(data_dir, **{'model.name': 'planted_bugs:Correct'}),
                        str(tmp_path))
  assert [v.check for v in verdicts if v.status != 'PASS'] == []


def test_cli_exits_1_on_a_failed_check(data_dir, tmp_path):
  config = sanity_config(data_dir, **{'model.name': 'planted_bugs:DeadLayer'})
  result = run_main(tmp_path, '--config=configs/mnist1d/sanity.py', *as_flags(config),
                    env={'PYTHONPATH': os.path.join(REPO, 'tests')})
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'gradients' in result.stderr.splitlines()[-1]
  assert statuses(tmp_path)['gradients'] == 'FAIL'


def test_inputs_before_net_show_the_augmentation(data_dir):
  config = sanity_config(data_dir)
  dataset = sanity.data_lib.load(config.dataset)
  raw_x, raw_y = sanity._first_batch(config, dataset, None)
  config.augment.shift = 5
  x, y = sanity._first_batch(config, dataset, sanity.augment.settings(config.augment))
  assert not (x == raw_x).all() and (y == raw_y).all()
