"""dataset.pipeline=grain: training batches streamed from storage give exactly the device
path's batches, resume at any step, and refuse what they cannot do."""
import json
import logging
import os
import time

import numpy as np
import pytest

from conftest import read_summary, train_and_evaluate
from recipe_jax.config import check as config_check
from recipe_jax import console
from recipe_jax.data import datasets as data, sources
from recipe_jax.engine import batches
from recipe_jax.engine import experiment
from recipe_jax.errors import UserError


def write_images(path, compressed=False, n_train=960, n_test=200):
  """uint8 8x8x3 images whose class is where the brightest of 10 pixels is."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (n_train + n_test, 8, 8, 3), dtype=np.uint8)
  y = x.reshape(len(x), -1)[:, :10].argmax(1)
  save = np.savez_compressed if compressed else np.savez
  save(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
  return f'npz:{path}'


@pytest.fixture
def image_config(small_config, tmp_path):
  small_config.dataset.name = write_images(tmp_path / 'images.npz')
  small_config.model.name = 'cnn2d'
  small_config.model.dropout = 0.1
  small_config.augment.crop_padding, small_config.augment.flip = 1, True
  small_config.augment.noise = 0.05
  small_config.batch_size = 32
  return small_config


def assert_same_dataset(streamed, in_memory):
  assert isinstance(streamed.x_train, data.Rows)
  assert streamed.x_train.shape == in_memory.x_train.shape
  np.testing.assert_array_equal(np.asarray(streamed.x_train), in_memory.x_train)
  np.testing.assert_array_equal(streamed.x_train[[5, 0, 7]], in_memory.x_train[[5, 0, 7]])
  for key in ('y_train', 'x_val', 'y_val', 'x_test', 'y_test', 'mean', 'std', 'train_rows'):
    np.testing.assert_array_equal(getattr(streamed, key), getattr(in_memory, key), err_msg=key)
  assert streamed.num_classes == in_memory.num_classes


@pytest.mark.parametrize('compressed', [False, True], ids=['memory-mapped', 'extracted'])
def test_npz_rows_stream_with_the_device_paths_split_statistics_and_normalisation(
    small_config, tmp_path, compressed):
  cfg = small_config.dataset
  cfg.name = write_images(tmp_path / 'images.npz', compressed)
  cfg.downsample, cfg.train_fraction = 2, 0.5
  in_memory = data.load(cfg)
  cfg.pipeline = 'grain'
  streamed = data.load(cfg)
  assert_same_dataset(streamed, in_memory)
  stats = tmp_path / 'input_stats.json'  # as the inspect stage writes them: no pass over the split
  stats.write_text(json.dumps({'mean': [1.0, 2.0, 3.0], 'std': [4.0, 5.0, 6.0]}))
  cfg.stats_from = str(stats)
  np.testing.assert_array_equal(data.load(cfg).mean, [1.0, 2.0, 3.0])
  member = sources.npz_member(str(tmp_path / 'images.npz'), 'x_train')
  assert isinstance(member, np.memmap)  # never read into memory whole
  assert os.path.isdir(tmp_path / 'images.npz.arrays') == compressed


def test_grain_trains_bit_identically_to_the_device_path_and_resumes_mid_epoch(
    image_config, tmp_path):
  device = train_and_evaluate(image_config, tmp_path / 'device')  # 60 steps, 30 an epoch
  image_config.dataset.pipeline = 'grain'
  image_config.num_train_steps = 45  # stops mid-epoch: the resume must start at step 45
  image_config.checkpoint_every_steps = 45
  train_and_evaluate(image_config, tmp_path / 'grain')
  image_config.num_train_steps = 60
  resumed = train_and_evaluate(image_config, tmp_path / 'grain')
  assert resumed['resumed_from_step'] == 45
  assert resumed['params_sha256'] == device['params_sha256']
  assert resumed['test_accuracy'] == device['test_accuracy']


def test_a_resume_that_restarts_the_input_at_the_wrong_step_changes_the_result(
    image_config, tmp_path, monkeypatch):
  """The planted defect the resume test must catch: the input restarts from step 0."""
  image_config.dataset.pipeline = 'grain'
  straight = train_and_evaluate(image_config, tmp_path / 'straight')
  image_config.num_train_steps = 45
  image_config.checkpoint_every_steps = 45
  train_and_evaluate(image_config, tmp_path / 'resumed')
  real_feed = batches.grain_feed
  monkeypatch.setattr(batches, 'grain_feed', lambda mesh, dataset, config, first_step, order:
                      real_feed(mesh, dataset, config, 0, order))
  image_config.num_train_steps = 60
  resumed = train_and_evaluate(image_config, tmp_path / 'resumed')
  assert resumed['params_sha256'] != straight['params_sha256']


def test_grain_trains_the_default_mnist1d_cnn_to_the_device_paths_bits(data_dir, tmp_path):
  from conftest import load_config
  config = load_config('configs/mnist1d/cnn.py')
  config.dataset.data_dir = data_dir
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 150, 75, 150
  device = train_and_evaluate(config, tmp_path / 'device')
  config.dataset.pipeline = 'grain'  # the embedded dataset is prepared for both pipelines
  assert train_and_evaluate(config, tmp_path / 'grain')['params_sha256'] == device[
      'params_sha256']


def test_data_wait_fraction_shows_a_reader_slower_than_the_step(image_config, tmp_path,
                                                               monkeypatch):
  """The planted reader takes 200 ms a batch on one thread, ~100x the step of this small CNN:
  the loop must report waiting most of its time whatever the machine's speed."""
  image_config.dataset.pipeline = 'grain'
  image_config.dataset.grain_threads, image_config.dataset.prefetch_batches = 1, 1
  image_config.num_train_steps = 20
  fast = train_and_evaluate(image_config, tmp_path / 'fast')
  read_rows = data.Rows.__getitem__

  def slow_read(rows, index):
    time.sleep(0.2)
    return read_rows(rows, index)
  monkeypatch.setattr(data.Rows, '__getitem__', slow_read)
  slow = train_and_evaluate(image_config, tmp_path / 'slow')
  assert slow['params_sha256'] == fast['params_sha256']  # slower, not different
  assert slow['data_wait_fraction'] > 0.5


def test_a_batch_read_out_of_order_changes_the_result(image_config, tmp_path, monkeypatch):
  """A planted defect the equality above must catch: streamed batches in another order."""
  device = train_and_evaluate(image_config, tmp_path / 'device')
  image_config.dataset.pipeline = 'grain'
  real_epoch = batches.BatchOrder.epoch
  monkeypatch.setattr(batches.BatchOrder, 'epoch',
                      lambda order, epoch: np.roll(real_epoch(order, epoch), 1))
  shifted = train_and_evaluate(image_config, tmp_path / 'shifted')
  assert shifted['params_sha256'] != device['params_sha256']


def test_tfds_array_record_streams_and_tfrecord_gets_a_one_line_error(small_config, tmp_path,
                                                                     monkeypatch):
  import tensorflow_datasets as tfds
  from recipe_jax.data import tfds_builders  # noqa: F401
  array_record_dir = str(tmp_path / 'array_record')
  tfds.builder('digits', data_dir=array_record_dir).download_and_prepare(
      file_format='array_record')
  cfg = small_config.dataset
  cfg.name, cfg.data_dir = 'digits', array_record_dir
  in_memory = data.load(cfg)  # the device path reads array_record too (random access)
  cfg.pipeline = 'grain'
  assert_same_dataset(data.load(cfg), in_memory)
  cfg.test_split = 'train'  # which TFDS split is the test split (ImageNet: 'validation')
  assert len(data.load(cfg).y_test) == len(in_memory.y_train) + len(in_memory.y_val)
  cfg.test_split = 'validation'
  with pytest.raises(UserError, match="no 'validation' split; it has .*set dataset.test_split"):
    data.load(cfg)
  cfg.test_split, cfg.image_key = 'test', 'pixels'
  for pipeline in ('device', 'grain'):  # one check serves both readers
    cfg.pipeline = pipeline
    with pytest.raises(UserError, match="no feature 'pixels'; it has image, label"):
      data.load(cfg)
  cfg.image_key, cfg.pipeline = 'image', 'grain'
  cfg.data_dir = small_config.dataset.data_dir = str(tmp_path / 'tfrecord')
  tfds.builder('digits', data_dir=cfg.data_dir).download_and_prepare(file_format='tfrecord')
  cfg.pipeline = 'device'
  tfrecord = data.load(cfg)  # TFDS's default format: the device path reads it with tf.data
  np.testing.assert_array_equal(tfrecord.x_train, in_memory.x_train)
  cfg.pipeline = 'grain'
  with pytest.raises(UserError, match=r'prepared without array_record.*`tfds build digits '
                     r'--file_format=array_record`.*or use dataset.pipeline=device'):
    data.load(cfg)
  os.remove(sources.embedded_arrays_path(cfg))  # else the arrays cache answers
  cfg.pipeline = 'device'
  monkeypatch.setattr(console, 'import_tensorflow_quietly', lambda: False)  # no tfrecord extra
  with pytest.raises(UserError, match=r'prepared as tfrecord, which needs TensorFlow: pip '
                     r'install -e "\.\[tfrecord\]"'):
    data.load(cfg)


def test_tfds_images_stream_without_tensorflow(small_config, tmp_path):
  import subprocess
  import sys
  import tensorflow_datasets as tfds
  from helpers import tiny_images_builder  # noqa: F401  registers tiny_images
  from conftest import REPO
  data_dir = str(tmp_path / 'tfds')
  tfds.builder('tiny_images', data_dir=data_dir).download_and_prepare(file_format='array_record')
  read = f"""
import sys
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import numpy as np; from helpers import tiny_images_builder
from recipe_jax.config import defaults
from recipe_jax.data import datasets as data
from recipe_jax.data import sources
from recipe_jax.engine import batches
cfg = defaults.get_config().dataset
cfg.name, cfg.data_dir, cfg.pipeline, cfg.normalize = 'tiny_images', {data_dir!r}, 'grain', False
dataset = data.load(cfg)
batch = dataset.x_train[[3, 1]]
assert batch.shape == (2, 8, 8, 3) and batch.dtype == np.float32 and batch.max() > 1, batch
assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
print('read', len(dataset.y_train), 'training images')
"""
  result = subprocess.run([sys.executable, '-c', read], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0 and 'read 54 training images' in result.stdout, result.stderr
  tfds.builder('tiny_images_varying', data_dir=data_dir).download_and_prepare(
      file_format='array_record')
  cfg = small_config.dataset
  cfg.name, cfg.data_dir, cfg.pipeline = 'tiny_images_varying', data_dir, 'auto'
  with pytest.raises(UserError, match=r'inputs of varying shape \(None, None, 3\); batches'):
    data.load(cfg)


def test_auto_streams_only_what_does_not_fit_and_grain_refuses_mixup(image_config, caplog):
  image_config.dataset.pipeline = 'auto'
  assert not experiment.build(image_config).streamed  # 960 small images fit
  image_config.dataset.device_memory_fraction = 1e-9
  with caplog.at_level(logging.INFO):
    assert experiment.build(image_config).streamed
  assert 'dataset.pipeline=auto: the training split needs' in caplog.text
  image_config.augment.mixup = 0.2
  with pytest.raises(UserError, match='mixup / augment.cutmix draw partners'):
    experiment.build(image_config)
  image_config.dataset.pipeline = 'fast'
  with pytest.raises(UserError, match="dataset.pipeline='fast': use one of device, grain, auto"):
    config_check.check_values(image_config)


def test_train_and_sanity_stages_run_on_a_streamed_dataset(image_config, tmp_path):
  from conftest import cli_flags, run_main
  image_config.dataset.pipeline = 'grain'
  flags = cli_flags(image_config, 'configs/digits/cnn.py')
  result = run_main(tmp_path / 'train', *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = read_summary(tmp_path / 'train')
  assert summary['finished'] and summary['data_wait_fraction'] is not None
  sanity = run_main(tmp_path / 'sanity', *flags, '--config.stage=sanity',
                    '--config.sanity.steps=60', '--config.sanity.overfit_steps=60',
                    '--config.sanity.seed_steps=5')
  assert 'Traceback' not in sanity.stderr, sanity.stderr[-3000:]
  verdicts = json.loads((tmp_path / 'sanity' / 'sanity' / 'result.json').read_text())['verdicts']
  from recipe_jax.stages import sanity as sanity_stage
  assert [v['check'] for v in verdicts] == [*sanity_stage.CHECKS, 'diagnosis']  # every check
  assert not [v for v in verdicts if 'could not run' in v['summary']], verdicts
  failed = any(v['status'] == 'FAIL' for v in verdicts)
  assert sanity.returncode == (1 if failed else 0), sanity.stderr[-3000:]
