"""Ctrl-C in every stage: what the stage has done so far is saved (verdicts, curves, tables),
its result says it stopped, and the run ends with exit code 130 in one line. In-process, a
KeyboardInterrupt is planted at a point inside each stage (where Python delivers a real Ctrl-C);
one run on the command line gets a real SIGINT."""
import json
import os
import signal
import time

import pytest

from conftest import REPO, cli_flags, run_main, start_main
from recipe_jax.report import error_analysis
from recipe_jax.engine import loop
from recipe_jax.runs import finished as runs
from recipe_jax.stages import (compare, data_scaling, evaluate, inspect, lr_find, recipe,
                               replicate, sanity, train)
from recipe_jax.verdicts import read_result
from test_sanity_stage import sanity_config


@pytest.fixture(autouse=True)
def no_earlier_stop():
  loop._stopped_by['signal'] = None
  yield
  loop._stopped_by['signal'] = None


def ctrl_c_on_call(real, call: int):
  """`real`, except that its `call`-th call raises KeyboardInterrupt (a Ctrl-C arriving there)."""
  calls = []

  def wrapped(*args, **kwargs):
    calls.append(1)
    if len(calls) == call:
      raise KeyboardInterrupt
    return real(*args, **kwargs)
  return wrapped


def ctrl_c_in_training_run(monkeypatch, run: int, after_steps: int = 3):
  """A real SIGINT to this process `after_steps` steps into the `run`-th training loop."""
  real, calls = loop.run, []

  def run_(train_step, state, feed, *, first, last, should_stop=None, **kwargs):
    calls.append(1)
    stop = should_stop
    if len(calls) == run and stop is not None:
      def stop(step):
        if step == first + after_steps:
          os.kill(os.getpid(), signal.SIGINT)  # handled by the loop's own handler
        return should_stop(step)
    return real(train_step, state, feed, first=first, last=last, should_stop=stop, **kwargs)
  monkeypatch.setattr(loop, 'run', run_)


def saved(workdir, stage):
  with open(os.path.join(workdir, stage, 'verdicts.json')) as f:
    checks = [v['check'] for v in json.load(f)]
  return checks, read_result(os.path.join(workdir, stage, 'result.json'))


def test_ctrl_c_in_sanity_saves_the_checks_done(data_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(sanity.checks, 'dumb_baselines',
                      ctrl_c_on_call(sanity.checks.dumb_baselines, 1))
  result = sanity.run(sanity_config(data_dir), str(tmp_path))
  done = list(sanity.CHECKS[:sanity.CHECKS.index('dumb_baselines')])
  assert not result.finished and loop.stopped_by() == 'SIGINT'
  checks, written = saved(tmp_path, 'sanity')
  assert checks == done and not written.finished
  assert os.path.isfile(tmp_path / 'sanity' / 'loss_at_init.png')


def test_ctrl_c_in_lr_find_saves_the_seeds_done(small_config, tmp_path, monkeypatch):
  small_config.lr_find.seeds, small_config.lr_find.steps = 2, 40
  small_config.seeds_side_by_side = 'off'
  monkeypatch.setattr(lr_find, 'suggest', ctrl_c_on_call(lr_find.suggest, 2))
  result = lr_find.run(small_config, str(tmp_path))
  assert not result.finished and loop.stopped_by() == 'SIGINT'
  with open(tmp_path / 'lr_find' / 'curves.json') as f:
    assert [c['seed'] for c in json.load(f)['per_seed']] == [small_config.seed]
  assert not saved(tmp_path, 'lr_find')[1].finished


def test_ctrl_c_in_inspect_saves_the_checks_done(small_config, tmp_path, monkeypatch):
  monkeypatch.setattr(inspect, '_label_noise', ctrl_c_on_call(inspect._label_noise, 1))
  result = inspect.run(small_config, str(tmp_path))
  assert not result.finished and loop.stopped_by() == 'SIGINT'
  checks, written = saved(tmp_path, 'inspect')
  assert checks[:2] == ['sizes_and_ranges', 'non_finite_values'] and 'outliers' in checks
  assert 'label_noise' not in checks and not written.finished


def test_ctrl_c_in_a_recipe_stage_that_saves_nothing_keeps_the_recipes_state(
    small_config, tmp_path, monkeypatch):
  small_config.stage = 'recipe'
  small_config.recipe.stages = 'inspect,sanity'
  small_config.inspect.cv_steps, small_config.inspect.cv_folds = 20, 2
  monkeypatch.setattr(sanity, 'run', ctrl_c_on_call(sanity.run, 1))
  result = recipe.run(small_config, str(tmp_path))
  assert not result.finished and loop.stopped_by() == 'SIGINT'
  assert read_result(os.path.join(tmp_path, 'inspect', 'result.json')).finished
  assert os.path.isfile(tmp_path / 'report.html')


def test_a_real_ctrl_c_in_a_recipe_with_an_earlier_fail_exits_130_not_1(data_dir, tmp_path):
  """sanity FAILs (a softmax before the loss), the recipe goes on, Ctrl-C lands in lr_find:
  the stop wins over the FAIL, in one line, and lr_find keeps the seeds it finished."""
  flags = ['--config=configs/mnist1d/sanity.py', '--config.stage=recipe',
           '--config.recipe.stages=sanity,lr_find', '--config.recipe.continue_on_fail=True',
           '--config.model.name=helpers.planted_bugs:SoftmaxOutput',
           f'--config.dataset.data_dir={data_dir}', '--config.sanity.steps=100',
           '--config.sanity.overfit_steps=100', '--config.sanity.seed_steps=3',
           '--config.lr_find.seeds=50', '--config.lr_find.steps=200',
           '--config.seeds_side_by_side=off']
  proc = start_main(tmp_path / 'run', *flags, env={'PYTHONPATH': os.path.join(REPO, 'tests')})
  deadline = time.time() + 240
  lines = []
  for line in proc.stdout:  # the console's lines, as they come
    lines.append(line)
    if 'lr_find seed' in line:  # a seed done: the stage is well inside its work
      break
    assert time.time() < deadline, ''.join(lines)[-3000:]
  proc.send_signal(signal.SIGINT)
  output = ''.join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 130, output[-3000:]
  assert 'Traceback' not in output and 'KeyboardInterrupt' not in output
  assert output.strip().splitlines()[-1] == ('recipe_jax: error: interrupted (Ctrl-C) after '
                                             'saving what was done; the same command resumes')
  assert read_result(str(tmp_path / 'run' / 'sanity' / 'result.json')).counts()['FAIL']
  with open(tmp_path / 'run' / 'lr_find' / 'curves.json') as f:
    assert 1 <= len(json.load(f)['per_seed']) < 50


def several_runs_config(config, stage):
  config.stage, config.seeds_side_by_side = stage, 'off'
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 40, 20, 20
  config.compare.seeds, config.data_scaling.seeds = 1, 1
  config.compare.variants = json.dumps({'narrow': {'model.width': 8}})
  config.data_scaling.fractions = (0.25, 0.5, 1.0)
  return config


@pytest.mark.parametrize('stage, module, second_run', [
    ('compare', compare, ('narrow', 'seed_0')),
    ('data_scaling', data_scaling, ('fraction_0.5', 'seed_0'))])
def test_ctrl_c_in_a_stage_of_several_runs_keeps_the_finished_runs_and_resumes_the_stopped(
    stage, module, second_run, small_config, tmp_path, monkeypatch, caplog):
  config = several_runs_config(small_config, stage)
  ctrl_c_in_training_run(monkeypatch, run=2)
  result = module.run(config, str(tmp_path))
  assert not result.finished and loop.stopped_by() == 'SIGINT'
  stopped = os.path.join(tmp_path, stage, *second_run)
  assert runs.summary(stopped)['finished'] is False
  assert os.listdir(os.path.join(stopped, 'checkpoints'))  # saved after the step Ctrl-C hit
  assert not os.path.exists(os.path.join(tmp_path, stage, 'result.json'))
  monkeypatch.undo()
  loop._stopped_by['signal'] = None
  with caplog.at_level('INFO'):
    result = module.run(config, str(tmp_path))
  assert result.finished
  assert caplog.text.count(f'{stage}: training') == 1 + (stage == 'data_scaling')
  assert 'resumed from the checkpoint at step' in caplog.text


def test_ctrl_c_in_replicate_resumes_to_the_same_verdicts(small_config, tmp_path, monkeypatch,
                                                           caplog):
  small_config.num_train_steps = 40
  train.run(small_config, str(tmp_path / 'train'))
  config = small_config.copy_and_resolve_references()
  config.stage, config.replicate.run_dir = 'replicate', str(tmp_path / 'train')
  config.replicate.seeds, config.replicate.perturbations = 2, '{}'
  ctrl_c_in_training_run(monkeypatch, run=2)  # in seed 1's run, after seed 0's rerun
  result = replicate.run(config, str(tmp_path / 'replicated'))
  assert not result.finished and loop.stopped_by() == 'SIGINT'
  assert runs.summary(str(tmp_path / 'replicated' / 'replicate' / 'seed_1'))['finished'] is False
  monkeypatch.undo()
  loop._stopped_by['signal'] = None
  with caplog.at_level('INFO'):
    result = replicate.run(config, str(tmp_path / 'replicated'))
  assert result.finished and 'resumed from the checkpoint at step' in caplog.text
  assert caplog.text.count('replicate: training') == 2  # seeds 1 (resumed) and 2
  assert {v.check: v.status for v in result.verdicts}['reproduced'] == 'PASS'


def test_ctrl_c_in_evaluate_leaves_the_evaluated_run_as_it_was(small_config, tmp_path,
                                                                  monkeypatch):
  """evaluate writes only its own folder, at its end: stopped, it leaves nothing half-written,
  and the train run it reads is untouched."""
  small_config.num_train_steps = 20
  train.run(small_config, str(tmp_path / 'train'))
  before = {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
            for d, _, names in os.walk(tmp_path / 'train') for f in names}
  small_config.stage, small_config.evaluate.run_dir = 'evaluate', str(tmp_path / 'train')
  monkeypatch.setattr(error_analysis, 'analyse', ctrl_c_on_call(error_analysis.analyse, 1))
  with pytest.raises(KeyboardInterrupt):
    evaluate.run(small_config, str(tmp_path / 'evaluate'))
  after = {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
           for d, _, names in os.walk(tmp_path / 'train') for f in names}
  assert after == before
  assert not os.path.exists(tmp_path / 'evaluate' / 'evaluate' / 'result.json')


def test_ctrl_c_where_no_loop_catches_it_is_one_line_and_exit_130(small_config, tmp_path):
  """A KeyboardInterrupt that reaches main (evaluate applying the model): one line, exit 130,
  no traceback."""
  small_config.num_train_steps = 20
  small_config.model.name = 'helpers.planted_bugs:CtrlCWhenAsked'
  small_config.analysis.enabled = False
  tests = os.path.join(REPO, 'tests')
  done = run_main(tmp_path / 'train', *cli_flags(small_config), env={'PYTHONPATH': tests})
  assert done.returncode == 0, done.stderr[-2000:]
  stopped = run_main(tmp_path / 'evaluate', *cli_flags(small_config), '--config.stage=evaluate',
                     f'--config.evaluate.run_dir={tmp_path / "train"}',
                     env={'PYTHONPATH': tests, 'PLANTED_CTRL_C': '1'})
  output = stopped.stdout + stopped.stderr
  assert stopped.returncode == 130, output[-3000:]
  assert 'Traceback' not in output and 'KeyboardInterrupt' not in output
  assert output.strip().splitlines()[-1].startswith('recipe_jax: error: interrupted (Ctrl-C); '
                                                    'what was saved so far stays')
