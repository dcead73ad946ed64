"""Multi-host code paths on one machine: 2 processes joined by jax.distributed (CPU backend,
gloo collectives, one device each) against one process with 2 virtual devices."""
import os
import re
import signal
import socket
import subprocess
import sys

from conftest import REPO, cli_flags, read_summary, run_main, wait_for_checkpoint

TWO_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_two_processes(workdir, flags, per_process=None):
  """Starts process 0 and 1 of a 2-process job on localhost."""
  port = free_port()
  return [subprocess.Popen(
      [sys.executable, '-m', 'recipe_jax.main', f'--workdir={workdir}', *flags,
       '--config.distributed=True', f'--config.coordinator_address=localhost:{port}',
       '--config.num_processes=2', f'--config.process_id={i}', *(per_process or {}).get(i, [])],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]


def outputs_of(procs, timeout=300) -> list:
  """Each process's output once all have ended; all are killed if one hangs (a collective
  that one process never joins waits forever)."""
  try:
    return [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()


def run_two_processes(workdir, flags, per_process=None, timeout=300):
  """Runs a 2-process job; returns (returncode, output) of each process."""
  procs = start_two_processes(workdir, flags, per_process)
  outputs = outputs_of(procs, timeout)
  return [(p.returncode, out) for p, out in zip(procs, outputs)]


def test_two_processes_train_like_two_devices_and_resume_from_the_shared_checkpoint(
    small_config, tmp_path):
  flags = cli_flags(small_config)  # 60 steps, checkpoints at 30 and 60
  for returncode, output in run_two_processes(tmp_path / 'hosts', flags):
    assert returncode == 0, output[-3000:]
  devices = run_main(tmp_path / 'devices', *flags, env=TWO_DEVICES)
  assert devices.returncode == 0, devices.stderr[-3000:]
  hosts, one_process = read_summary(tmp_path / 'hosts'), read_summary(tmp_path / 'devices')
  assert hosts['num_devices'] == one_process['num_devices'] == 2
  assert hosts['params_sha256'] == one_process['params_sha256']  # bit-identical, not close

  longer = [*flags, '--config.num_train_steps=90']
  for returncode, output in run_two_processes(tmp_path / 'hosts', longer):
    assert returncode == 0, output[-3000:]
    assert 'resumed from the checkpoint at step 60' in output  # each process resumed
  straight = run_main(tmp_path / 'straight', *longer, env=TWO_DEVICES)
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert read_summary(tmp_path / 'hosts')['params_sha256'] == read_summary(
      tmp_path / 'straight')['params_sha256']


def test_a_sweep_on_two_hosts_only_lets_process_0_touch_the_study(small_config, tmp_path):
  space = '{"optimizer.learning_rate": {"type": "float", "low": 0.001, "high": 0.03, "log": true}}'
  flags = [*cli_flags(small_config), '--config.stage=tune', f'--config.tune.space={space}',
           '--config.tune.trials=3', '--config.tune.pruner=median',
           f'--config.tune.storage=sqlite:///{tmp_path}/hosts/tune/study.db']
  # Process 1 gets a storage it cannot open: the sweep only works if it never tries.
  unusable = ['--config.tune.storage=sqlite:////nonexistent/directory/study.db']
  results = run_two_processes(tmp_path / 'hosts', flags, per_process={1: unusable})
  for returncode, output in results:
    assert returncode == 0, output[-3000:]
  rows = (tmp_path / 'hosts' / 'tune' / 'trials.csv').read_text().splitlines()[1:]
  assert len(rows) == 3 and all(',COMPLETE,' in r for r in rows)  # median prunes from trial 5
  assert os.path.exists(tmp_path / 'hosts' / 'tune' / 'best_config.py')
  for _, output in results:  # both processes trained all three trials to their end
    assert len(re.findall(r'run tune/trial_\d: validation accuracy .* step 60', output)) == 3


def test_two_processes_stream_only_their_shard_and_train_like_two_devices(small_config, tmp_path):
  from test_streaming import write_images
  small_config.dataset.name = write_images(tmp_path / 'images.npz')
  small_config.model.name, small_config.batch_size = 'cnn2d', 32
  small_config.augment.crop_padding, small_config.augment.flip = 1, True
  small_config.dataset.pipeline = 'grain'
  small_config.optimizer.accumulate_steps = 2  # micro-batches of each process's 16 rows
  flags = cli_flags(small_config, 'configs/digits/cnn.py')
  for returncode, output in run_two_processes(tmp_path / 'hosts', flags):
    assert returncode == 0, output[-3000:]
  # The device path with 2 devices in one process: every batch, augmentation and sum the same.
  devices = run_main(tmp_path / 'devices', *flags, '--config.dataset.pipeline=device',
                     env=TWO_DEVICES)
  assert devices.returncode == 0, devices.stderr[-3000:]
  assert read_summary(tmp_path / 'hosts')['params_sha256'] == read_summary(
      tmp_path / 'devices')['params_sha256']


def test_a_process_other_than_0_writes_no_file_but_its_checkpoints(small_config, tmp_path,
                                                                     monkeypatch):
  """Every file of a train run except orbax's (which orbax coordinates itself) comes from one
  writer: run as process 1 would, the workdir holds nothing else."""
  import types
  from recipe_jax import multihost
  from recipe_jax.stages import train
  # The process index is what a second host has; is_leader itself decides from it.
  monkeypatch.setattr(multihost, 'jax', types.SimpleNamespace(process_index=lambda: 1))
  assert not multihost.is_leader()
  train.run(small_config, str(tmp_path))
  written = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path)
             for f in files]
  assert written and all(p.startswith('checkpoints' + os.sep) for p in written), written
  monkeypatch.undo()
  train.run(small_config, str(tmp_path / 'leader'))  # the same run as process 0 writes them
  for name in ('summary.json', 'report.html', 'train/report.md', 'train/result.json',
               'analysis/confusion_matrix.png'):
    assert os.path.isfile(tmp_path / 'leader' / name), name


def test_a_sigterm_to_one_host_stops_both_after_the_same_step_and_they_resume(small_config,
                                                                            tmp_path):
  small_config.num_train_steps, small_config.checkpoint_every_steps = 1500, 100
  flags = cli_flags(small_config)
  procs = start_two_processes(tmp_path / 'hosts', flags)
  wait_for_checkpoint(procs[0], tmp_path / 'hosts' / 'checkpoints')
  procs[1].send_signal(signal.SIGTERM)  # process 0 is not told
  outputs = outputs_of(procs)
  assert [p.returncode for p in procs] == [0, 0], outputs[1][-3000:]
  stopped = [re.findall(r'SIGTERM: saved a checkpoint at step (\d+)', out) for out in outputs]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, outputs  # the same step on both
  assert int(stopped[0][0]) < 1500
  for returncode, output in run_two_processes(tmp_path / 'hosts', flags):
    assert returncode == 0, output[-3000:]
  straight = run_main(tmp_path / 'straight', *flags, env=TWO_DEVICES)
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert read_summary(tmp_path / 'hosts')['resumed_from_step'] == int(stopped[0][0])
  assert read_summary(tmp_path / 'hosts')['params_sha256'] == read_summary(
      tmp_path / 'straight')['params_sha256']


def test_a_ctrl_c_on_one_host_stops_both_after_the_same_step(small_config, tmp_path):
  """Regression: one host died mid-step on Ctrl-C while its peer blocked in a collective. Now
  the Ctrl-C becomes JAX's preemption notice: both save at the same step; the host that got it
  exits 130, the other 0 (it was asked to stop, as by a preemption)."""
  small_config.num_train_steps, small_config.checkpoint_every_steps = 1500, 100
  procs = start_two_processes(tmp_path / 'hosts', cli_flags(small_config))
  wait_for_checkpoint(procs[0], tmp_path / 'hosts' / 'checkpoints')
  procs[1].send_signal(signal.SIGINT)
  outputs = outputs_of(procs)
  assert [p.returncode for p in procs] == [0, 130], outputs[1][-3000:]
  stopped = [re.findall(r'(?:SIGTERM|SIGINT): saved a checkpoint at step (\d+)', out)
             for out in outputs]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, outputs
  assert 'Traceback' not in outputs[1]
