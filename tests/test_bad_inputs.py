"""Bad inputs walked by category, the way test_config_check walks every key: each workdir form
that cannot hold a run, each file of a run directory damaged in turn, and a cluster that is not
there give one line and exit 2, with no traceback, and leave what was there as it was. (The
data file forms are walked in test_data.py; services in test_tracking.py and test_gcs.py.)"""
import os
import shutil

import pytest

from conftest import cli_flags, run_main

TRAIN = '--config=configs/mnist1d/mlp.py'


def one_line_exit_2(result, message):
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('recipe_jax: error: ') and message in last, last


@pytest.mark.parametrize('form, message', [
    ('a file', 'is a file, not a directory'),
    ('under a file', 'lies under'),
    ('empty', '--workdir is empty'),
    ('blank', '--workdir is empty'),
])
def test_every_workdir_that_cannot_be_a_directory_is_one_line_exit_2(tmp_path, form, message):
  existing = tmp_path / 'notes.txt'
  existing.write_text('mine')
  workdir = {'a file': existing, 'under a file': existing / 'run', 'empty': '',
             'blank': ' '}[form]
  one_line_exit_2(run_main(workdir, TRAIN), message)
  assert existing.read_text() == 'mine' and os.listdir(tmp_path) == ['notes.txt']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data_dir):
  from recipe_jax.config import defaults
  c = defaults.get_config()
  c.dataset.data_dir, c.num_train_steps = data_dir, 20
  c.eval_every_steps = c.checkpoint_every_steps = 10
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  assert run_main(workdir, *cli_flags(c)).returncode == 0
  return c, workdir


def contents(directory) -> dict:
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      if name != 'log.txt':  # a rerun's lines are appended: the log records every attempt
        with open(path, 'rb') as f:
          found[os.path.relpath(path, directory)] = f.read()
  return found


@pytest.mark.parametrize('damaged', ['config.json', 'data.json', 'summary.json'])
@pytest.mark.parametrize('how', ['truncated', 'not utf-8'])
def test_each_damaged_record_of_a_run_directory_is_one_line_and_changes_nothing(
    finished_run, tmp_path, damaged, how):
  config, original = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(original, workdir)
  path = workdir / damaged
  path.write_bytes(path.read_bytes()[:25] if how == 'truncated' else b'{"seed": \xff\xff}')
  before = contents(workdir)
  one_line_exit_2(run_main(workdir, *cli_flags(config)), f'{damaged} is damaged')
  assert contents(workdir) == before


def test_distributed_without_a_cluster_is_one_line_exit_2(tmp_path):
  one_line_exit_2(run_main(tmp_path / 'run', TRAIN, '--config.distributed=True'),
                  'distributed=True: cannot join the cluster')
