"""Start-up: the train path runs without TensorFlow (TensorBoard files still written and
readable), the second run of the same shapes compiles from the persistent cache, and
profile_steps writes a trace."""
import glob
import json
import os
import subprocess
import sys

import pytest

from recipe_jax.data import datasets as data, sources

from conftest import REPO, process_env, read_summary, train_and_evaluate

RUN_WITHOUT_TF = """
import sys
from recipe_jax import main
main.parse_flags(sys.argv)
main.main([])
print(json.dumps({'tensorflow_imported': 'tensorflow' in sys.modules}))
"""


@pytest.fixture
def prepared(small_config):
  """The embedded dataset read once through TFDS, which leaves its arrays cache behind."""
  data.load(small_config.dataset)
  assert os.path.isfile(sources.embedded_arrays_path(small_config.dataset))
  return small_config


def run_train(workdir, config, *extra, env=None):
  flags = [f'--workdir={workdir}', '--config=configs/mnist1d/mlp.py',
           f'--config.dataset.data_dir={config.dataset.data_dir}', '--config.num_train_steps=60',
           '--config.eval_every_steps=30', '--config.analysis.enabled=False', *extra]
  return subprocess.run([sys.executable, '-c', 'import json\n' + RUN_WITHOUT_TF, *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=300,
                        env=process_env(env))


def test_a_train_run_imports_no_tensorflow_and_tensorboard_reads_its_events(prepared, tmp_path):
  done = run_train(tmp_path, prepared)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) == {'tensorflow_imported': False}
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  tags = set(events.Tags()['tensors'])
  assert {'train_loss', 'train_accuracy', 'eval_accuracy', 'eval_loss', 'test_accuracy'} <= tags
  summary = read_summary(tmp_path)
  last_eval = events.Tensors('eval_accuracy')[-1]
  assert last_eval.step == 60
  from tensorboard.util import tensor_util
  value = float(tensor_util.make_ndarray(last_eval.tensor_proto))
  assert value == pytest.approx(summary['eval_accuracy'])


def test_the_embedded_arrays_cache_gives_the_same_dataset_as_tfds(prepared):
  from_cache = data.load(prepared.dataset)
  os.remove(sources.embedded_arrays_path(prepared.dataset))
  from_tfds = data.load(prepared.dataset)  # and writes the cache again
  for field in ('x_train', 'y_train', 'x_val', 'x_test', 'y_test', 'train_rows'):
    assert (getattr(from_cache, field) == getattr(from_tfds, field)).all()
  assert from_cache.tfds_ids == from_tfds.tfds_ids and from_cache.num_classes == 10


def test_a_second_run_of_the_same_shapes_compiles_from_the_persistent_cache(prepared, tmp_path):
  cache = f'--config.compilation_cache_dir={tmp_path / "cache"}'
  env = {'JAX_LOG_COMPILES': '1'}  # JAX then logs each cache hit
  for run in ('first', 'second'):
    done = run_train(tmp_path / run, prepared, cache, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
  hits = {run: open(tmp_path / run / 'log.txt').read().count('Persistent compilation cache hit')
          for run in ('first', 'second')}
  assert hits['first'] == 0 and hits['second'] >= 3  # init, train step, evaluation at least
  assert os.listdir(tmp_path / 'cache')


def test_profile_steps_writes_a_trace_of_those_steps(small_config, tmp_path):
  small_config.profile_steps = 5
  train_and_evaluate(small_config, str(tmp_path))
  assert glob.glob(str(tmp_path / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
