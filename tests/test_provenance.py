"""Provenance: a run records the code it came from (commit, branch, uncommitted diff of each
repository it used), the versions, devices, host and command; a restart on other code is logged
and recorded, not refused."""
import json
import socket
import subprocess

import jax

from conftest import REPO, run_main

CONFIG = """
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('mlp')
  c.num_train_steps, c.eval_every_steps, c.log_every_steps = 40, 40, 20
  c.model.name = 'my_models:Linear'
  c.loss = 'my_losses:cross_entropy'
  return c
"""
MODELS = """
import flax.linen as nn


def Linear(num_classes):  # noqa: N802
  return nn.Dense(num_classes)
"""
LOSSES = """
import optax


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
"""


def git(repo, *args) -> str:
  return subprocess.run(['git', '-C', str(repo), *args], check=True, capture_output=True,
                        text=True).stdout.strip()


def test_a_run_records_its_code_versions_devices_and_command_and_a_restart_on_other_code(
    tmp_path):
  repo, outside, workdir = tmp_path / 'experiments', tmp_path / 'scratch', tmp_path / 'run'
  repo.mkdir()
  outside.mkdir()
  (repo / 'my_config.py').write_text(CONFIG)
  (repo / 'my_models.py').write_text(MODELS)
  (outside / 'my_losses.py').write_text(LOSSES)  # a folder outside git
  git(repo, 'init', '-q', '-b', 'wider')
  git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'start', '--allow-empty')
  git(repo, 'add', 'my_config.py', 'my_models.py')
  git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'a linear model')
  with open(repo / 'my_models.py', 'a') as f:
    f.write('# next: a wider hidden layer\n')  # not committed
  (repo / 'notes.txt').write_text('untracked')
  env = {'PYTHONPATH': f'{repo}:{outside}'}
  flags = [f'--config={repo}/my_config.py']
  first = run_main(workdir, *flags, env=env)
  assert first.returncode == 0, first.stderr[-3000:]

  record = json.loads((workdir / 'provenance.json').read_text())
  code = {entry['path']: entry['git'] for entry in record['code']}
  assert set(code) == {REPO, str(repo), str(outside)}
  roles = {entry['path']: entry['roles'] for entry in record['code']}
  assert roles == {REPO: ['recipe_jax'], str(repo): ['config', 'model'], str(outside): ['loss']}
  mine = code[str(repo)]
  assert mine['commit'] == git(repo, 'rev-parse', 'HEAD') and mine['branch'] == 'wider'
  assert mine['dirty'] and mine['untracked'] == ['notes.txt']
  diff = (workdir / mine['diff_file']).read_text()
  assert '+# next: a wider hidden layer' in diff and 'my_models.py' in diff
  assert code[str(outside)] is None  # outside git, recorded as such
  assert record['versions']['jax'] == jax.__version__ and record['versions']['flax']
  assert record['host'] == socket.gethostname() and record['devices']['count'] == 1
  assert record['command'] == (f'python -m recipe_jax.main --workdir={workdir} '
                               f'--config={repo}/my_config.py')
  assert json.loads((workdir / 'provenance.json').read_text()) == record  # nothing else wrote

  git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'the note')
  longer = run_main(workdir, *flags, '--config.num_train_steps=60', env=env)
  assert longer.returncode == 0, longer.stderr[-3000:]  # logged, not refused
  commit = git(repo, 'rev-parse', 'HEAD')
  assert (f'the code differs from the code it last ran with: config+model: commit '
          f'{mine["commit"][:10]} -> {commit[:10]}') in longer.stderr, longer.stderr[-3000:]
  again = json.loads((workdir / 'provenance.json').read_text())
  assert [[c['git']['commit'] for c in r['code'] if c['path'] == str(repo)]
          for r in again['restarts']] == [[commit]]
  assert again['code'] == record['code']  # the first start's record stays
  before = (workdir / 'provenance.json').read_bytes()
  same = run_main(workdir, *flags, '--config.num_train_steps=60', env=env)
  assert same.returncode == 0 and 'code differs' not in same.stderr
  assert (workdir / 'provenance.json').read_bytes() == before  # the same code writes nothing


def test_differences_name_each_role_and_version_that_changed():
  from recipe_jax.runs import provenance
  before = {'code': {'recipe_jax': 'abc', 'config+model': 'x1'},
            'diffs': {'recipe_jax': None, 'config+model': 'd1'},
            'versions': {'jax': '0.4.1', 'flax': '0.8'}}
  now = {'code': {'recipe_jax': 'abc', 'config+model': 'x1', 'loss': None},
         'diffs': {'recipe_jax': None, 'config+model': 'd2', 'loss': None},
         'versions': {'jax': '0.4.2', 'flax': '0.8'}}
  assert provenance.differences(before, now) == [
      'config+model: other uncommitted changes', 'loss: now used', 'jax 0.4.1 -> 0.4.2']
  assert provenance.differences(before, before) == []


def test_a_checkout_elsewhere_is_the_same_code_and_a_failure_to_record_is_one_warning(
    small_config, tmp_path, monkeypatch, caplog):
  from recipe_jax.runs import provenance
  record = provenance.collect(small_config)
  moved = json.loads(json.dumps(record))
  for repo in moved['code']:
    repo['path'] = '/elsewhere' + repo['path']  # another VM's home
  assert provenance.differences(provenance.identity(record), provenance.identity(moved)) == []

  def broken(config):
    raise UnicodeDecodeError('utf-8', b'\xe9', 0, 1, 'invalid continuation byte')
  monkeypatch.setattr(provenance, 'collect', broken)
  provenance.record(str(tmp_path / 'run'), small_config)  # the run goes on
  assert 'provenance not recorded (UnicodeDecodeError' in caplog.text
  assert not (tmp_path / 'run' / 'provenance.json').exists()
