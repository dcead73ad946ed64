"""A run directory knows the config and data it was started with: a restart or a reuse with
another config is refused in one line, and nothing of the finished run changes."""
import hashlib
import json
import os

import numpy as np
import pytest

from conftest import cli_flags, read_summary, run_main, train_and_evaluate
from recipe_jax.config import check as config_check
from recipe_jax.runs import store as run_store
from recipe_jax.errors import UserError
from recipe_jax.runs import driver
from recipe_jax.stages import compare


def file_hashes(directory):
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return found


def test_a_changed_config_on_a_finished_run_is_one_line_and_every_file_stays(small_config,
                                                                             tmp_path):
  workdir = tmp_path / 'run'
  assert run_main(workdir, *cli_flags(small_config)).returncode == 0
  before = file_hashes(workdir)
  refused = run_main(workdir, *cli_flags(small_config), '--config.model.width=7',
                     '--config.num_train_steps=90')
  assert refused.returncode == 2, refused.stderr
  [line] = refused.stderr.strip().splitlines()
  assert 'model.width: 100 -> 7' in line and 'num_train_steps: 60 -> 90' not in line
  assert 'use a new --workdir, or --config.init_from=' in line
  after = file_hashes(workdir)
  assert after.pop('refused.json')  # the refusal noted beside the run, for the worklog
  assert after == before  # log, config, summary, checkpoints: byte-identical
  [noted] = json.load(open(workdir / 'refused.json'))
  assert noted['reason'] == line[len('recipe_jax: error: '):]
  assert '--config.model.width=7' in noted['command']
  assert not (tmp_path / 'run' / 'checkpoints_corrupt').exists()


def test_what_may_change_on_resume_is_accepted_and_logged(small_config, tmp_path, caplog):
  workdir = str(tmp_path)
  driver.run_training(small_config, workdir)
  small_config.num_train_steps, small_config.eval_every_steps = 90, 45
  with caplog.at_level('INFO'):
    summary = driver.run_training(small_config, workdir)
  assert summary['step'] == 90 and summary['resumed_from_step'] == 60
  [line] = [r.getMessage() for r in caplog.records if 'continuing with' in r.getMessage()]
  assert 'num_train_steps: 60 -> 90' in line and 'eval_every_steps: 30 -> 45' in line
  assert json.load(open(tmp_path / 'config.json'))['num_train_steps'] == 90
  small_config.num_train_steps = 30  # shorter: the run has gone past it
  with pytest.raises(UserError, match=r'num_train_steps: 90 -> 30 \(only a larger value'):
    driver.run_training(small_config, workdir)


def test_other_data_under_the_same_name_is_refused(small_config, tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / 'mine.npz'
  arrays = dict(x_train=rng.normal(size=(300, 5)), y_train=rng.integers(0, 3, 300),
                x_test=rng.normal(size=(50, 5)), y_test=rng.integers(0, 3, 50))
  np.savez(path, **arrays)
  small_config.dataset.name = f'npz:{path}'
  small_config.num_train_steps = 20
  driver.run_training(small_config, str(tmp_path / 'run'))
  arrays['y_train'] = (arrays['y_train'] + 1) % 3  # the labels changed, the name did not
  np.savez(path, **arrays)
  with pytest.raises(UserError, match=r'holds a run of another config: data: .*sha256=.* -> '):
    driver.run_training(small_config, str(tmp_path / 'run'))


def test_a_restore_of_other_shapes_is_named_and_nothing_is_quarantined(small_config, tmp_path):
  """A run written before run identity (no config.json) restored with another model."""
  workdir = tmp_path / 'run'
  train_and_evaluate(small_config, workdir)
  small_config.model.width = 7
  with pytest.raises(UserError, match=r'other shapes than this config builds \(params/Dense_0/'
                                      r'bias saved \(100,\), here \(7,\)\)'):
    train_and_evaluate(small_config, workdir)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['30', '60']
  assert not (tmp_path / 'run' / 'checkpoints_corrupt').exists()


def test_compare_refuses_to_reuse_a_run_trained_with_another_override(small_config, tmp_path):
  small_config.stage = 'compare'
  small_config.num_train_steps, small_config.eval_every_steps = 30, 30
  small_config.compare.seeds = 1
  small_config.compare.variants = json.dumps({'narrow': {'model.width': 8}})
  compare.run(small_config, str(tmp_path))
  before = read_summary(tmp_path / 'compare' / 'narrow' / 'seed_0')
  small_config.compare.variants = json.dumps({'narrow': {'model.width': 16}})
  with pytest.raises(UserError, match=r'narrow/seed_0 holds a run of another config: '
                                      r'model.width: 8 -> 16'):
    compare.run(small_config, str(tmp_path))
  assert read_summary(tmp_path / 'compare' / 'narrow' / 'seed_0') == before


def test_stage_results_depend_on_their_own_section_and_not_on_other_stages():
  base = config_check.flatten(config_check.variant(
      __import__('recipe_jax.config.defaults', fromlist=['x']).get_config(), {}))
  tuned = {**base, 'tune.space': '{"model.width": {"type": "int", "low": 8, "high": 9}}'}
  assert run_store.differences(base, tuned, 'sanity') == ({}, {})
  assert run_store.differences(base, tuned, None) == ({}, {})  # a train run: training keys only
  assert run_store.differences(base, tuned, 'tune')[1]
  more = {**base, 'sanity.steps': 9}
  assert run_store.differences(base, more, 'sanity')[1] == {'sanity.steps': (500, 9)}
