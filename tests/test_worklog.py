"""The worklog over runs of several stages: finished, preempted, diverged, an evaluate stage; its
config differences from the defaults and from the run before; bad roots are one line."""
import os
import re

import pytest

from recipe_jax import main, worklog as worklog_cli
from recipe_jax.engine import loop
from recipe_jax.errors import DivergenceError, RefusedRun
from recipe_jax.runs import store as run_store, worklog
from recipe_jax.stages import evaluate, train
from test_interrupts import ctrl_c_in_training_run


@pytest.fixture
def runs_folder(small_config, tmp_path, monkeypatch):
  root = tmp_path / 'runs'
  small_config.num_train_steps = 40
  train.run(small_config, str(root / 'a_baseline'))
  wider = small_config.copy_and_resolve_references()
  wider.model.width = 64
  with monkeypatch.context() as m:
    ctrl_c_in_training_run(m, run=1)
    train.run(wider, str(root / 'b_wider'))  # stopped by Ctrl-C 3 steps in: preempted
  loop._stopped_by['signal'] = None
  hot = small_config.copy_and_resolve_references()
  hot.optimizer.learning_rate = 1e4
  with pytest.raises(DivergenceError):
    train.run(hot, str(root / 'c_hot'))
  looked = small_config.copy_and_resolve_references()
  looked.stage, looked.evaluate.run_dir = 'evaluate', str(root / 'a_baseline')
  run_store.claim(*main.stage_directory(looked, str(root / 'd')))  # as main does
  evaluate.run(looked, str(root / 'd'))
  narrower = small_config.copy_and_resolve_references()
  narrower.model.width = 7
  with pytest.raises(RefusedRun) as refused:  # what main does with a start it refuses
    run_store.check(str(root / 'a_baseline'), narrower)
  run_store.note_refusal(refused.value.directory, str(refused.value), 'python -m ... width=7')
  return root


def test_the_worklog_lists_every_run_oldest_first_with_its_status_and_changes(runs_folder,
                                                                               capsys):
  found = worklog.rows(str(runs_folder))
  assert [r['time'] for r in found] == sorted(r['time'] for r in found)
  refused = [r for r in found if r['status'].startswith('refused')]
  found = [r for r in found if r not in refused]
  assert [r['run'] for r in found] == ['a_baseline', 'b_wider', 'c_hot', 'd/evaluate']
  assert [(r['run'], r['status']) for r in refused] == [
      ('a_baseline', 'refused: model.width: 100 -> 7')]
  by_run = {r['run']: r for r in found}
  assert by_run['a_baseline']['status'] == 'finished'
  assert by_run['b_wider']['status'] == 'preempted'
  assert by_run['c_hot']['status'].startswith('failed: finished: training diverged at step')
  assert by_run['d/evaluate']['stage'] == 'evaluate'
  assert by_run['b_wider']['changed from the run before'] == 'model.width=64'
  assert by_run['c_hot']['changed from the run before'] == (  # back from b's width
      'model.width=None, optimizer.learning_rate=10000.0')
  assert 'num_train_steps=40' in by_run['a_baseline']['changed from the defaults']
  assert re.fullmatch(r'\d+ PASS \d+ WARN 0 FAIL', by_run['a_baseline']['checks'])
  assert 'test accuracy' in by_run['a_baseline']['headline']
  assert by_run['a_baseline']['size'] > 10_000 and by_run['a_baseline']['commit']
  assert worklog_cli.main([str(runs_folder)]) == 0
  table = capsys.readouterr().out.splitlines()
  assert table[0].startswith('| time | run | stage | status |') and len(table) == 2 + 5
  out = runs_folder / 'worklog.html'
  assert worklog_cli.main([str(runs_folder), '--format=html', f'--out={out}']) == 0
  page = out.read_text()
  assert page.count('<tr>') == 6 and 'refused: model.width' in page and 'preempted' in page and 'model.width=64' in page


def test_a_worklog_root_that_is_missing_or_holds_no_run_is_one_line(tmp_path, capsys):
  assert worklog_cli.main([str(tmp_path / 'nowhere')]) == 2
  assert capsys.readouterr().err == (
      f'recipe_jax: error: worklog: {tmp_path}/nowhere is not a folder\n')
  (tmp_path / 'empty').mkdir()
  assert worklog_cli.main([str(tmp_path / 'empty')]) == 2
  assert 'no runs under' in capsys.readouterr().err


def test_a_run_writing_while_the_worklog_reads_is_shown_not_fatal(runs_folder):
  (runs_folder / 'e_starting').mkdir()
  (runs_folder / 'e_starting' / 'config.json').write_text('{"stage": "tr')  # half written
  os.utime(runs_folder / 'e_starting' / 'config.json', (4e9, 4e9))
  (runs_folder / 'a_baseline' / 'summary.json').write_text('{"finished": tr')
  found = worklog.rows(str(runs_folder))
  by_run = {r['run']: r for r in found if not r['status'].startswith('refused')}
  assert by_run['e_starting']['status'] == 'unreadable config.json (being written, or damaged)'
  assert by_run['e_starting']['time'] == 4e9  # its file's time: not 1970, not first
  assert by_run['a_baseline']['status'] == 'finished (summary.json unreadable)'


def test_a_stage_folder_that_trains_is_read_as_its_stage(tmp_path):
  """overfit's folder holds config.json, summary.json (its run) and result.json: the stage and
  its FAIL come from result.json, not from the run's finished summary."""
  import json
  folder = tmp_path / 'runs' / 'overfit'
  folder.mkdir(parents=True)
  (folder / 'config.json').write_text(json.dumps({'stage': 'overfit', 'seed': 0}))
  (folder / 'summary.json').write_text(json.dumps({'finished': True, 'test_accuracy': 0.5}))
  (folder / 'result.json').write_text(json.dumps({
      'stage': 'overfit', 'finished': True, 'metrics': {'train_accuracy': 0.61},
      'verdicts': [{'check': 'fits_training_set', 'status': 'FAIL',
                    'summary': 'train accuracy 0.61 after 3000 steps\nbelow 0.99'}]}))
  [row] = worklog.rows(str(tmp_path / 'runs'))
  assert row['stage'] == 'overfit'
  assert row['status'] == ('failed: fits_training_set: train accuracy 0.61 after 3000 steps '
                           'below 0.99')
  assert row['checks'] == '0 PASS 0 WARN 1 FAIL' and 'train accuracy 61' in row['headline']
