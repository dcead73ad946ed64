"""The command line as a user meets it: exit codes, one-line errors, preemption and crashes."""
import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
import types

import numpy as np
import optax
import pytest

from conftest import (REPO, cli_flags, read_summary, run_main, start_main, train_and_evaluate,
                      wait_for_checkpoint)
from recipe_jax import console
from recipe_jax.config import check as config_check
from recipe_jax.engine import checkpoints
from recipe_jax.report import results as report
from recipe_jax.model import models
from recipe_jax.engine import state as state_lib
from recipe_jax.engine import loop
from recipe_jax.verdicts import StageResult, Verdict

CONFIG = '--config=configs/mnist1d/mlp.py'



@pytest.mark.parametrize('flags, message', [
    (['--config.no_such_key=1'], "unknown config key 'no_such_key' (every key is in"),
    (['--config.optimizer.learning_rat=1'],
     "unknown config key 'optimizer.learning_rat'; did you mean 'optimizer.learning_rate'?"),
    (['--config.batch_size=abc'], 'abc'),
    (['--config.dataset.name=no_such_dataset'], "unknown dataset 'no_such_dataset'; use one of"),
    (['--config.model.name=transformer'], "unknown model 'transformer'; use one of"),
    (['--config.optimizer.name=lion'], "optimizer.name='lion': use one of adam, adamw, sgd"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, flags, message):
  result = run_main(tmp_path, CONFIG, *flags)
  assert result.returncode == 2, result.stderr
  error_lines = [l for l in result.stderr.splitlines() if l.startswith('recipe_jax: error:')]
  assert len(error_lines) == 1 and message in error_lines[0], result.stderr
  assert 'Traceback' not in result.stderr


def test_help_exits_0_and_lists_the_stages_and_the_example_configs():
  result = subprocess.run([sys.executable, '-m', 'recipe_jax.main', '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  listed = re.findall(r'^  (\w+) +\S', result.stdout.split('Stages')[1].split('Example')[0], re.M)
  assert listed == list(config_check.STAGES)
  assert 'configs/mnist1d/recipe.py' in result.stdout.split('Example configs:')[1]


@pytest.mark.parametrize('given, missing', [('--workdir=/tmp/never_made', '--config=FILE'),
                                            (CONFIG, '--workdir=DIR')])
def test_a_missing_config_or_workdir_is_one_line_exit_2(given, missing):
  result = subprocess.run([sys.executable, '-m', 'recipe_jax.main', given], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      next(l for l in result.stderr.splitlines() if l.startswith(f'recipe_jax: error: missing '
                                                                 f'{missing}'))]


def test_missing_config_file_is_one_line_exit_2(tmp_path):
  result = run_main(tmp_path, '--config=configs/nope/missing.py')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'configs/nope/missing.py' in result.stderr.strip().splitlines()[-1]


def test_huge_learning_rate_stops_with_exit_3_and_keeps_checkpoints(small_config, tmp_path):
  """A warmup to a learning rate of 100: fine for the first steps (checkpoints every 10),
  diverged a few tens of steps in."""
  small_config.num_train_steps, small_config.optimizer.warmup_steps = 2000, 1000
  small_config.optimizer.learning_rate = 100.0
  small_config.checkpoint_every_steps = small_config.log_every_steps = 10
  result = run_main(tmp_path, *cli_flags(small_config))
  assert result.returncode == 3, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  diverged, kept = map(int, re.search(
      r'diverged at step (\d+): .*learning rate \(100\).*last good checkpoint: step (\d+)',
      last).groups())
  assert 0 < kept < diverged
  assert max(int(s) for s in os.listdir(tmp_path / 'checkpoints')) == kept  # all kept intact
  with open(tmp_path / 'train' / 'result.json') as f:
    [diverged] = json.load(f)['verdicts']
  assert diverged['status'] == 'FAIL' and 'diverged at step' in diverged['summary']


def test_sigterm_saves_a_checkpoint_and_exits_0(small_config, tmp_path):
  small_config.num_train_steps = 10**6
  small_config.checkpoint_every_steps = 100
  proc = start_main(tmp_path, *cli_flags(small_config))
  wait_for_checkpoint(proc, tmp_path / 'checkpoints')
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output
  summary = read_summary(tmp_path)
  assert summary['preempted'] and 0 < summary['step'] < 10**6
  assert str(summary['step']) in os.listdir(tmp_path / 'checkpoints')


def test_ctrl_c_saves_a_checkpoint_says_one_line_exits_130_and_resumes_bit_identically(
    small_config, tmp_path):
  small_config.num_train_steps = 3000
  small_config.checkpoint_every_steps = 100
  straight = train_and_evaluate(small_config, str(tmp_path / 'straight'))
  proc = start_main(tmp_path / 'run', *cli_flags(small_config))
  wait_for_checkpoint(proc, tmp_path / 'run' / 'checkpoints')
  proc.send_signal(signal.SIGINT)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 130, output[-3000:]
  assert 'Traceback' not in output and 'KeyboardInterrupt' not in output
  assert output.strip().splitlines()[-1] == (
      'recipe_jax: error: interrupted (Ctrl-C) after saving what was done; the same command '
      'resumes')
  stopped = read_summary(tmp_path / 'run')
  assert not stopped['finished'] and str(stopped['step']) in os.listdir(
      tmp_path / 'run' / 'checkpoints')  # saved where it stopped, not at the last periodic one
  assert run_main(tmp_path / 'run', *cli_flags(small_config)).returncode == 0
  resumed = read_summary(tmp_path / 'run')
  assert resumed['resumed_from_step'] == stopped['step']
  assert resumed['params_sha256'] == straight['params_sha256']


def test_a_first_ctrl_c_asks_to_save_and_stop_and_a_second_stops_at_once():
  with loop.stop_for_preemption() as stop:
    assert not stop(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop(2) and loop.stopped_by() == 'SIGINT'  # the loop saves, then stops
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored afterwards


def test_run_killed_after_a_checkpoint_resumes_bit_identically(small_config, tmp_path):
  small_config.num_train_steps = 1500
  small_config.checkpoint_every_steps = 100
  straight = train_and_evaluate(small_config, str(tmp_path / 'straight'))
  workdir = tmp_path / 'killed'
  proc = start_main(workdir, *cli_flags(small_config))
  wait_for_checkpoint(proc, workdir / 'checkpoints')
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(workdir / 'summary.json'), 'the run finished before it was killed'
  result = run_main(workdir, *cli_flags(small_config))
  assert result.returncode == 0, result.stderr
  resumed = read_summary(workdir)
  assert 0 < resumed['resumed_from_step'] < 1500
  assert resumed['params_sha256'] == straight['params_sha256']


def test_one_and_two_devices_agree(small_config, tmp_path):
  small_config.num_train_steps = 20
  small_config.checkpoint_every_steps = 20
  # SGD: linear in the gradient, so rounding in the cross-device mean stays at rounding level.
  # (Adam divides by sqrt(v): a near-zero gradient's rounding becomes an lr-sized step.)
  flags = [*cli_flags(small_config), '--config.optimizer.name=sgd',
           '--config.optimizer.learning_rate=0.1']
  one = run_main(tmp_path / 'one', *flags)
  two = run_main(tmp_path / 'two', *flags,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert one.returncode == 0 and two.returncode == 0, two.stderr
  assert read_summary(tmp_path / 'one')['num_devices'] == 1
  assert read_summary(tmp_path / 'two')['num_devices'] == 2
  one_params, two_params = (
      checkpoints.read_state_as_numpy(tmp_path / run / 'checkpoints/20')['params']
      for run in ('one', 'two'))
  init_params = state_lib.init_state(
      models.create(small_config.model, 10), optax.adam(1e-3), (40,), small_config.seed).params
  for layer in one_params:
    for name in one_params[layer]:
      np.testing.assert_allclose(one_params[layer][name], two_params[layer][name],
                                 rtol=1e-4, atol=1e-5)
      assert not np.allclose(one_params[layer][name], init_params[layer][name])  # it trained


def test_hundreds_of_queued_steps_on_two_cpu_devices_do_not_deadlock(small_config, tmp_path):
  """Without one-step-at-a-time dispatch on CPU meshes this aborted: XLA gave up waiting in the
  step's all-reduce after 40 s, a few hundred asynchronously queued CNN steps in."""
  small_config.model.name = 'cnn1d'
  for key in ('num_train_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    small_config[key] = 800
  result = run_main(tmp_path, *cli_flags(small_config), timeout=400,
                    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert read_summary(tmp_path)['num_devices'] == 2
  assert read_summary(tmp_path)['test_accuracy'] > 0.5


USER_CODE = {'PYTHONPATH': os.path.join(os.path.dirname(os.path.abspath(__file__)))}


@pytest.mark.parametrize('stage, model, phase', [
    ('train', 'helpers.user_models:BatchStatsInEval', 'in eval mode'),
    ('train', 'helpers.user_models:RaisesInTrain', 'in train mode'),
    ('lr_find', 'helpers.user_models:RaisesInTrain', 'in train mode'),
    ('compare', 'helpers.user_models:RaisesInTrain', 'in train mode'),
])
def test_a_failing_user_model_is_one_line_exit_2(small_config, tmp_path, stage, model, phase):
  small_config.model.log_prior_output_bias = model != 'helpers.user_models:RaisesInTrain'
  result = run_main(tmp_path, *cli_flags(small_config), f'--config.stage={stage}',
                    f'--config.model.name={model}', '--config.lr_find.steps=20',
                    '--config.compare.seeds=1', env=USER_CODE)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"recipe_jax: error: model '{model}' failed {phase}: "), last
  assert 'Traceback' in (tmp_path / 'log.txt').read_text()  # the details are kept for later


def test_console_shows_the_pipeline_lines_and_a_closing_summary(small_config, tmp_path):
  """Regression: the first run printed absl INFO lines from JAX and TFDS internals (the libtpu
  line among them), TensorFlow's C++ banner and TFDS progress bars."""
  result = run_main(tmp_path / 'quiet', *cli_flags(small_config))
  assert result.returncode == 0, result.stderr[-3000:]
  console = result.stderr + result.stdout
  for noise in ('libtpu', 'xla_bridge', 'oneDNN', 'cpu_feature_guard', 'Constructing tf.data',
                'tensorboard_writer.py', 'absl::InitializeLog'):
    assert noise not in console, noise
  lines = result.stderr.strip().splitlines()
  assert all(line[:2].isdigit() and line[2] == ':' for line in lines), lines[:5]  # HH:MM:SS
  assert any('step 60/60 (100%)' in line and 'ETA' in line for line in lines)
  end = next(i for i, line in enumerate(lines) if 'train finished: ' in line)
  assert ' checks: ' in lines[end] and '0 FAIL' in lines[end]
  assert lines[end + 1].split(' ', 1)[1].startswith('test accuracy ')  # the result in words
  assert lines[end + 2].endswith(f"open first: {tmp_path / 'quiet' / 'report.html'}")
  assert 'also:' in lines[end + 3] and 'summary.json' in lines[end + 3]
  steps = [line.split(' ', 1)[1] for line in lines[end + 4:]]
  assert steps and all(step.startswith('next: ') for step in steps), steps
  log = (tmp_path / 'quiet' / 'log.txt').read_text()
  assert 'tensorboard_writer.py' in log and 'step 60/60' in log  # everything is in the file

  verbose = run_main(tmp_path / 'verbose', *cli_flags(small_config), '--verbosity=1')
  assert verbose.returncode == 0 and 'tensorboard_writer.py' in verbose.stderr


def test_a_failing_user_loss_is_one_line_exit_2(small_config, tmp_path):
  result = run_main(tmp_path, *cli_flags(small_config),
                    '--config.loss=helpers.planted_bugs:loss_with_wrong_shapes', env=USER_CODE)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("recipe_jax: error: model 'mlp' (with loss "
                         "'helpers.planted_bugs:loss_with_wrong_shapes') failed "), last


def test_a_repeated_notice_reaches_the_console_once_and_the_log_every_time(caplog):
  with caplog.at_level('INFO'):
    for _ in range(3):
      console.info_once('seeds one at a time: %s', 'planted reason 17')
  records = [r for r in caplog.records if 'planted reason 17' in r.getMessage()]
  assert [getattr(r, 'file_only', False) for r in records] == [False, True, True]


@types.coroutine
def _suspend():
  yield


async def _read_array_index_and_device_put():
  """Like orbax's, left unfinished by a failed read: closing it raises."""
  try:
    await _suspend()
  finally:
    raise ValueError('Encountered error while reading array index')


def test_a_library_exception_nobody_can_catch_reaches_log_txt_not_the_console(tmp_path, capfd):
  """Orbax's unawaited coroutines after a truncated checkpoint printed three 60-line
  tracebacks ('Exception ignored in: <coroutine ...>') through sys.unraisablehook."""
  root, absl = logging.getLogger(), logging.getLogger('absl')
  handlers, level, hook = list(root.handlers), root.level, sys.unraisablehook
  absl_level = absl.level  # setup sets absl's verbosity to INFO: later tests count INFO lines
  try:
    console.setup(str(tmp_path))
    for _ in range(3):
      coroutine = _read_array_index_and_device_put()
      coroutine.send(None)  # started, then dropped unfinished
      del coroutine
    gc.collect()
  finally:
    for handler in list(root.handlers):
      root.removeHandler(handler)
    for handler in handlers:
      root.addHandler(handler)
    root.setLevel(level)
    absl.setLevel(absl_level)
    logging.captureWarnings(False)
    sys.unraisablehook = hook
  err = capfd.readouterr().err
  assert 'Traceback' not in err and 'Exception ignored' not in err, err
  assert err.count('a library raised ValueError while cleaning up') == 1, err
  log = (tmp_path / 'log.txt').read_text()
  assert log.count('ValueError in <coroutine object _read_array_index_and_device_put') == 3
  assert 'Traceback' in log


@pytest.mark.parametrize('stage, counted', [('recipe', 'stages'), ('sanity', 'checks')])
def test_the_closing_line_says_whether_it_counts_stages_or_checks(stage, counted):
  verdicts = [Verdict(f'c{i}', s, '') for i, s in enumerate(('PASS', 'WARN', 'PASS'))]
  first = report.closing_lines(StageResult(stage, verdicts, {}, []), '/w')[0]
  assert first == f'{stage} finished: 3 {counted}: 2 PASS, 1 WARN, 0 FAIL'


def test_a_stopped_stage_gives_no_next_steps_its_verdicts_are_not_all_in():
  stopped = StageResult('compare', [], {}, [], finished=False)
  lines = report.closing_lines(stopped, '/w')
  assert lines[0] == ('compare stopped (resume with the same command): 0 checks: 0 PASS, 0 WARN, '
                      '0 FAIL')
  assert not any(line.startswith('next:') for line in lines)
