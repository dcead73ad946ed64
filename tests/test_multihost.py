"""Multi-host code paths on one machine: 2 processes joined by jax.distributed (CPU backend,
gloo collectives, one device each) against one process with 2 virtual devices."""
import os
import socket
import subprocess
import sys

from conftest import REPO, cli_flags, read_summary, run_main

TWO_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, flags, per_process=None, timeout=300):
  """Starts process 0 and 1 of a 2-process job; returns their CompletedProcess-like results."""
  port = free_port()
  procs = []
  for i in (0, 1):
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'recipe_jax.main', f'--workdir={workdir}', *flags,
         '--config.distributed=True', f'--config.coordinator_address=localhost:{port}',
         '--config.num_processes=2', f'--config.process_id={i}', *(per_process or {}).get(i, [])],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
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
  for _, output in results:  # both processes trained all three trials, step for step
    assert output.count('step 60/60 (100%)') == 3
