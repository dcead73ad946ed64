import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import time

import pytest

# The suite's programs are tiny and compiled once each: XLA:CPU's LLVM passes are most of their
# compile time and gain nothing at run time here (a ResNet-50 sanity run: compiles 46 s -> 34 s).
# Semantics are XLA's, not LLVM's: what a test asserts does not change. Set before JAX starts.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

from recipe_jax.config import defaults  # noqa: E402 (after XLA_FLAGS)
from recipe_jax.engine import training  # noqa: E402

RECORD_VERDICTS = os.environ.get('RECIPE_JAX_RECORD_VERDICTS')  # a .jsonl path, or unset


def record_verdicts(path: str) -> None:
  """Appends every verdict built in this process (the test, check, status and cause) to `path`:
  the record a refactor's behaviour is compared against (scripts/verdicts_preserved.py)."""
  from recipe_jax import verdicts
  built = verdicts.Verdict.__post_init__

  def recorded(verdict):
    built(verdict)
    test = os.environ.get('PYTEST_CURRENT_TEST', '').rsplit(' (', 1)[0]
    cause = getattr(verdict, 'cause', None) or verdict.evidence.get('cause')
    with open(path, 'a') as f:
      f.write(json.dumps({'test': test, 'check': verdict.check, 'status': verdict.status,
                          'cause': cause if isinstance(cause, (str, type(None))) else str(cause),
                          'summary': verdict.summary[:200]}) + '\n')
  verdicts.Verdict.__post_init__ = recorded


if RECORD_VERDICTS:
  record_verdicts(RECORD_VERDICTS)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTS_PROCESSES = re.compile(r'run_main\(|start_main\(|subprocess\.|Popen|running_server\(|'
                              r'gcs_emulator\.running|multiprocessing')


def starts_processes(function, module) -> bool:
  """Whether a test starts processes (CLI runs, workers, servers), by its source and that of the
  functions of its module it calls."""
  source = inspect.getsource(function)
  called = [getattr(module, name) for name in re.findall(r'(\w+)\(', source)
            if inspect.isfunction(getattr(module, name, None))
            and getattr(module, name).__module__ == module.__name__]
  return any(STARTS_PROCESSES.search(inspect.getsource(f)) for f in [function, *called])


def pytest_collection_modifyitems(items):
  """Tests that start processes are marked `slow`: `pytest -m "not slow"` is the quick loop."""
  for item in items:
    if hasattr(item, 'function') and starts_processes(item.function, item.module):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """In-process tests share one persistent compilation cache, as CLI runs do: the same small
  programs (a seed's train step, an evaluator) are compiled once per session, not per test."""
  import jax
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


@pytest.fixture(scope='module', autouse=True)
def forget_compiled_programs():
  """Each test module's compiled programs are dropped after it: one process runs the whole
  suite, and the executables it keeps would exhaust the process's memory mappings
  (`engine/compiled.py`)."""
  yield
  from recipe_jax.engine import compiled
  compiled.forget()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data_dir for the session: mnist1d and digits are prepared into it on first use."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def small_config(data_dir):
  """A short mnist1d MLP run; tests change what they exercise."""
  c = defaults.get_config()
  c.dataset.name = 'mnist1d'
  c.dataset.data_dir = data_dir
  c.model.name = 'mlp'
  c.optimizer.learning_rate = 1e-2
  c.num_train_steps = 60
  c.log_every_steps = 20
  c.eval_every_steps = 30
  c.checkpoint_every_steps = 30
  return c


@pytest.fixture
def tune_config(small_config):
  """A 3-trial study of 40-step runs over the learning rate and the width."""
  small_config.stage = 'tune'
  small_config.num_train_steps = 40
  small_config.eval_every_steps = 20
  small_config.checkpoint_every_steps = 20
  small_config.tune.trials = 3
  small_config.tune.space = json.dumps({
      'optimizer.learning_rate': {'type': 'float', 'low': 1e-3, 'high': 3e-2, 'log': True},
      'model.width': {'type': 'int', 'low': 16, 'high': 64}})
  return small_config


def load_config(relative_path):
  """A config file's get_config(), as --config=PATH would load it."""
  spec = importlib.util.spec_from_file_location('config_file', os.path.join(REPO, relative_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def as_flags(config, prefix='config'):
  """--config.KEY=VALUE for every set leaf, so a CLI run uses exactly this in-process config."""
  flags = []
  for key, value in config.items():
    if hasattr(value, 'items'):
      flags += as_flags(value, f'{prefix}.{key}')
    elif value is not None:
      flags.append(f'--{prefix}.{key}={value}')
  return flags


def cli_flags(config, config_file='configs/mnist1d/mlp.py'):
  """--config=FILE plus every key of `config`: the CLI runs exactly this config."""
  return [f'--config={config_file}', *as_flags(config)]


def process_env(env=None) -> dict:
  """This process's environment with `env` over it; XLA_FLAGS are added to, not replaced."""
  merged = {**os.environ, **(env or {})}
  if env and 'XLA_FLAGS' in env:
    merged['XLA_FLAGS'] = f"{env['XLA_FLAGS']} {FAST_COMPILE}"
  return merged


def run_main(workdir, *flags, env=None, timeout=300):
  return subprocess.run(
      [sys.executable, '-m', 'recipe_jax.main', f'--workdir={workdir}', *flags],
      capture_output=True, text=True, cwd=REPO, timeout=timeout, env=process_env(env))


def start_main(workdir, *flags, env=None):
  return subprocess.Popen(
      [sys.executable, '-m', 'recipe_jax.main', f'--workdir={workdir}', *flags],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
      env=process_env(env))


def read_summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def train_and_evaluate(config, workdir):
  """The train loop on the experiment the config describes; returns the run summary."""
  from recipe_jax.engine import experiment
  return training.train_and_evaluate(experiment.build(config), str(workdir))


def wait_until_a_trial_is_stale(storage: str, heartbeat_s: float, timeout=60):
  """Polls an Optuna storage until a RUNNING trial's heartbeat is older than the grace period
  (2 x heartbeat_s), the condition a restarted worker requeues it on: no fixed sleep."""
  import optuna
  db = optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat_s)
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(db._get_stale_trial_ids(s._study_id) for s in db.get_all_studies()):
      return
    time.sleep(0.1)
  raise AssertionError(f'no trial in {storage} went stale within {timeout} s')


def wait_for_checkpoint(proc, directory, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory)):
      return
    time.sleep(0.01)
  raise AssertionError(f'no finished checkpoint in {directory} (exit code {proc.poll()})')
