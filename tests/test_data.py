import os
import re
import numpy as np
import pytest
import tensorflow_datasets as tfds

from recipe_jax.data import datasets as data
from recipe_jax.errors import UserError
from recipe_jax.data import sources
from recipe_jax.engine import batches


def test_mnist1d_is_generated_offline_with_the_published_sizes(small_config):
  small_config.dataset.val_fraction = 0.0
  ds = data.load(small_config.dataset)
  assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
  assert ds.num_classes == 10 and set(np.unique(ds.y_train)) == set(range(10))
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def test_digits_split_is_deterministic_and_complete(small_config):
  small_config.dataset.name = 'digits'
  small_config.dataset.val_fraction = 0.0
  first, second = data.load(small_config.dataset), data.load(small_config.dataset)
  assert len(first.y_train) + len(first.y_test) == 1797
  assert first.x_train.shape[1:] == (8, 8, 1)
  np.testing.assert_array_equal(first.x_test, second.x_test)


def test_validation_is_carved_from_train_disjoint_and_seed_independent():
  train_idx, val_idx = data.validation_split(1000, 0.1)
  assert len(val_idx) == 100 and len(train_idx) == 900
  assert not set(train_idx) & set(val_idx)
  again_train, again_val = data.validation_split(1000, 0.1)
  np.testing.assert_array_equal(val_idx, again_val)


def test_normalisation_uses_train_statistics_only(small_config):
  ds = data.load(small_config.dataset)
  assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3
  small_config.dataset.normalize = False
  raw = data.load(small_config.dataset)
  np.testing.assert_allclose((raw.x_test - ds.mean) / ds.std, ds.x_test, atol=1e-5)


def test_batch_order_is_a_pure_function_of_seed_and_step():
  first = batches.BatchOrder(seed=3, num_examples=1000, batch_size=100).indices(17)
  again = batches.BatchOrder(seed=3, num_examples=1000, batch_size=100).indices(17)
  np.testing.assert_array_equal(first, again)
  other_seed = batches.BatchOrder(seed=4, num_examples=1000, batch_size=100).indices(17)
  assert not np.array_equal(first, other_seed)
  order = batches.BatchOrder(3, 1000, 100)
  epoch = np.concatenate([order.indices(s) for s in range(10)])
  assert sorted(epoch) == list(range(1000))  # one epoch visits every example once
  next_epoch = np.concatenate([order.indices(s) for s in range(10, 20)])
  assert not np.array_equal(epoch, next_epoch)  # and each epoch is reshuffled


def test_batch_larger_than_train_split_is_a_user_error():
  with pytest.raises(UserError, match='batch_size=500 is larger'):
    batches.steps_per_epoch(400, 500)


def _write_npz(path, num_train=120, num_test=40, **replace):
  rng = np.random.default_rng(0)
  arrays = {'x_train': rng.normal(size=(num_train, 6)).astype(np.float32),
            'y_train': rng.integers(0, 3, num_train),
            'x_test': rng.normal(size=(num_test, 6)).astype(np.float32),
            'y_test': rng.integers(0, 3, num_test)}
  arrays.update(replace)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return arrays


def test_npz_loader_reads_users_arrays(small_config, tmp_path):
  arrays = _write_npz(tmp_path / 'mine.npz')
  small_config.dataset.name = f'npz:{tmp_path / "mine.npz"}'
  small_config.dataset.val_fraction = 0.0
  small_config.dataset.normalize = False
  ds = data.load(small_config.dataset)
  np.testing.assert_array_equal(ds.x_test, arrays['x_test'])
  np.testing.assert_array_equal(ds.y_train, arrays['y_train'])
  assert ds.num_classes == 3


def _zip_with(path, name, payload: bytes):
  import zipfile
  with zipfile.ZipFile(path, 'w') as archive:
    for key in sources.NPZ_KEYS:
      archive.writestr(f'{key}.npy', payload if key == name else _npy_bytes(np.zeros((4, 2))))


def _npy_bytes(array) -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


NPZ_DEFECTS = {  # name: (how to write the file, what the one line must say)
    'missing array': (lambda p: _write_npz(p, y_test=None), 'lacks y_test'),
    'negative labels': (lambda p: _write_npz(p, y_train=np.array([0, 1, -1] * 40)),
                        r'y_train holds negative labels \(min -1, rows \[2, 5, 8'),
    'empty test split': (lambda p: _write_npz(p, x_test=np.zeros((0, 6), np.float32),
                                              y_test=np.zeros(0, np.int64)),
                         r'the test split is empty \(x_test has shape \(0, 6\)\)'),
    'features differ': (lambda p: _write_npz(p, x_test=np.zeros((40, 7), np.float32)),
                        r"x_train's examples have shape \(6,\) and x_test's \(7,\)"),
    'not an npz': (lambda p: p.write_text('a,b\n1,2\n'), r'not an \.npz \(a zip of \.npy'),
    'empty file': (lambda p: p.write_bytes(b''), 'the file is empty'),
    'pickled objects': (lambda p: _write_npz(p, y_train=np.array([0, 1, None] * 40, object)),
                        'y_train holds Python objects'),
    'text labels': (lambda p: _write_npz(p, y_test=np.array(['cat', 'dog'] * 20)),
                    'y_test has dtype <U3; inputs and labels must be numbers'),
    'float labels': (lambda p: _write_npz(p, y_train=np.zeros(120, np.float32)),
                     'y_train has dtype float32; labels must be integers'),
    'one value per example': (lambda p: _write_npz(p, x_train=np.zeros(120, np.float32)),
                              r'x_train has shape \(120,\); inputs need a row per example'),
    'labels per row': (lambda p: _write_npz(p, y_train=np.zeros(119, np.int64)),
                       r'x_train has 120 rows and y_train has shape \(119,\)'),
    'corrupt member': (lambda p: _zip_with(p, 'x_train', b'not an npy'),
                       'x_train is not a readable .npy array'),
    'one-hot labels': (lambda p: _write_npz(p, y_train=np.eye(3, dtype=np.float32)[
        np.arange(120) % 3]), r'y_train has shape \(120, 3\): one-hot .*argmax\(axis=1\)'),
    'labels as a column': (lambda p: _write_npz(p, y_test=np.zeros((40, 1), np.int64)),
                           r'y_test has shape \(40, 1\), a column.*y_test.ravel\(\)'),
    'ids, not class indices': (lambda p: _write_npz(p, y_train=np.array([0, 3, 7, 10**9] * 30)),
                               r'run up to 1000000000 but only 6 distinct values occur \(0, 1, '
                               r'2, 3, ..., 1000000000\).*np.unique\(y, return_inverse=True\)'),
    'one class': (lambda p: _write_npz(p, y_train=np.full(120, 2)),
                  r'y_train holds one class \(label 2\) in every row'),
}


@pytest.mark.parametrize('defect', NPZ_DEFECTS)
@pytest.mark.parametrize('pipeline', ['device', 'grain'])
def test_every_malformed_npz_is_one_line_naming_the_file_and_the_defect(
    small_config, tmp_path, defect, pipeline):
  write, message = NPZ_DEFECTS[defect]
  path = tmp_path / 'bad.npz'
  write(path)
  small_config.dataset.name = f'npz:{path}'
  small_config.dataset.pipeline = pipeline
  with pytest.raises(UserError, match=message) as refused:
    data.load(small_config.dataset)
  assert str(refused.value).startswith(f"npz file '{path}': ") and '\n' not in str(refused.value)


def _with_value_at(array, row, value):
  array = array.copy()
  array[row, 1] = value
  return array


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('split, pipeline, message', [
    ('test', 'device', r'x_test holds NaN or Inf in 1 of 40 examples \(rows \[3\] of the source '
                       r'test split\)'),
    ('train', 'device', r'x_train holds NaN or Inf in 1 of 120 examples \(rows \[3\]'),
    ('train', 'grain', r'x_train holds NaN or Inf in 1 of 120 examples \(rows \[3\]'),
])
def test_non_finite_inputs_in_any_split_are_one_line_naming_the_rows(
    small_config, tmp_path, value, split, pipeline, message):
  clean = _write_npz(tmp_path / 'clean.npz')
  np.savez(tmp_path / 'bad.npz', **{**clean, f'x_{split}': _with_value_at(
      clean[f'x_{split}'], 3, value)})
  small_config.dataset.name = f'npz:{tmp_path / "bad.npz"}'
  small_config.dataset.val_fraction = 0.0
  small_config.dataset.pipeline = pipeline
  with pytest.raises(UserError, match=message) as refused:
    data.load(small_config.dataset)
  assert '\n' not in str(refused.value)
  assert not np.isfinite(data.load(small_config.dataset, require_finite=False).x_test).all() or (
      split == 'train')  # inspect reads them, to report them
  small_config.dataset.name = f'npz:{tmp_path / "clean.npz"}'
  data.load(small_config.dataset)  # the same file without the value passes


def test_classes_training_never_shows_are_logged(small_config, tmp_path, caplog):
  arrays = _write_npz(tmp_path / 'a.npz', y_test=np.array([0, 1, 2, 3] * 10))
  small_config.dataset.name = f'npz:{tmp_path / "a.npz"}'
  with caplog.at_level('WARNING'):
    dataset = data.load(small_config.dataset)
    data.check_labels(dataset)
  assert dataset.num_classes == 4 and 3 not in arrays['y_train']
  assert ('10 test examples are of classes [3], which the training split never shows'
          in caplog.text)


def test_a_training_split_of_one_class_is_one_line(small_config):
  from recipe_jax.engine import experiment
  small_config.dataset.train_fraction = 1e-4  # one example of MNIST-1D's training split
  with pytest.raises(UserError, match=r'the training split holds one class \(\{\d\}\) in all its '
                     'examples: there is nothing to classify'):
    experiment.build(small_config)


def test_a_malformed_npz_on_the_command_line_is_exit_2(tmp_path):
  from conftest import run_main
  _write_npz(tmp_path / 'bad.npz', y_test=np.array([0, -3] * 20))
  result = run_main(tmp_path / 'run', '--config=configs/mnist1d/mlp.py',
                    f'--config.dataset.name=npz:{tmp_path / "bad.npz"}')
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].endswith(
      'y_test holds negative labels (min -3, rows [1, 3, 5, 7, 9]); labels must be integers '
      '0..C-1')


def test_tfds_datasets_load_through_the_tfds_layer(small_config, tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_online', lambda: True)  # mock_data stands in for the download
  small_config.dataset.name = 'mnist'
  small_config.dataset.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=50):
    ds = data.load(small_config.dataset)
  assert ds.x_train.shape == (45, 28, 28, 1) and ds.x_val.shape == (5, 28, 28, 1)
  assert ds.x_test.shape == (50, 28, 28, 1) and ds.num_classes == 10


def test_missing_tfds_data_offline_says_where_to_put_it(small_config, tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_online', lambda: False)
  small_config.dataset.name = 'mnist'
  small_config.dataset.data_dir = str(tmp_path)
  with pytest.raises(UserError, match=f'not prepared under {tmp_path}/mnist .*offline'):
    data.load(small_config.dataset)


def test_an_error_while_reading_a_prepared_dataset_is_not_taken_for_missing_data(
    small_config, monkeypatch):
  """Any AssertionError while reading TFDS used to mean "not prepared", and a download was
  tried: a real error was hidden behind a misleading one."""
  small_config.dataset.name = 'digits'
  data.load(small_config.dataset)  # prepared (and its arrays cached)
  small_config.dataset.image_key = 'image'  # the cache is bypassed only for other keys: remove it
  import os
  os.remove(sources.embedded_arrays_path(small_config.dataset))

  def broken_read(builder, cfg):
    raise AssertionError('a bug inside the reader')
  monkeypatch.setattr(sources, '_read_tfds_splits', broken_read)
  monkeypatch.setattr(sources, '_download', lambda *a: pytest.fail('tried to download'))
  with pytest.raises(AssertionError, match='a bug inside the reader'):
    data.load(small_config.dataset)


def test_two_processes_preparing_an_embedded_dataset_at_once_both_load_it(tmp_path):
  """Sweep workers start together on a fresh machine: they raced to rename TFDS's directory
  (FileExistsError), and the loser read an empty dataset."""
  import subprocess
  import sys
  code = ('from recipe_jax.config import defaults; from recipe_jax.data import datasets as data; '
          'c = defaults.get_config(); '
          f'c.dataset.name = "digits"; c.dataset.data_dir = "{tmp_path}"; '
          'print(len(data.load(c.dataset).y_train))')
  workers = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [w.communicate(timeout=240) for w in workers]
  assert [w.returncode for w in workers] == [0, 0], results[1][1][-2000:]
  assert [out.strip() for out, _ in results] == ['1293', '1293']  # 1437 less validation


ENCODINGS = {  # name: (label feature, label of example i, what the one line must say)
    'one_hot_labels': (tfds.features.Tensor(shape=(3,), dtype=np.int64),
                       lambda i: np.eye(3, dtype=np.int64)[i % 3],
                       r"feature 'label' has shape \(3,\) per example \(one-hot or per-class"),
    'column_labels': (tfds.features.Tensor(shape=(1,), dtype=np.int64),
                      lambda i: np.array([i % 3]), r'shape \(1,\) per example \(a column'),
    'sparse_id_labels': (tfds.features.Tensor(shape=(), dtype=np.int64),
                         lambda i: [0, 3, 7, 10 ** 9][i % 4],
                         r"sparse_id_labels': the labels run up to 1000000000 but only 4 "
                         r'distinct values occur \(0, 3, 7, 1000000000\): ids, not class'),
    'float_labels': (tfds.features.Tensor(shape=(), dtype=np.float32), lambda i: i % 3 * 1.0,
                     r"the train split's 'label' has dtype float32; labels must be integers"),
    'one_class_labels': (tfds.features.Tensor(shape=(), dtype=np.int64),
                         lambda i: 0 if i < 40 else 1,
                         r"the train split's 'label' holds one class \(label 0\)"),
    'negative_labels': (tfds.features.Tensor(shape=(), dtype=np.int32),
                        lambda i: i % 3 - 1, r"'label' holds negative labels \(min -1"),
    'plain_int_labels': (tfds.features.Tensor(shape=(), dtype=np.int64), lambda i: i % 5 % 3,
                         None),  # valid: 3 classes from the values
}


@pytest.mark.parametrize('name', ENCODINGS)
def test_every_tfds_label_encoding_is_one_line_or_loads(name, small_config, tmp_path):
  """A TFDS dataset whose label is not a ClassLabel: one-hot, a column, ids far beyond the
  classes (before, 10**9 output units were built), floats, one class, negatives; a plain
  integer scalar loads with its classes counted from the values."""
  from helpers import tiny_images_builder
  feature, label, message = ENCODINGS[name]
  tiny_images_builder.labelled(''.join(w.title() for w in name.split('_')), feature, label)
  tfds.builder(name, data_dir=str(tmp_path)).download_and_prepare(file_format='array_record')
  cfg = small_config.dataset
  cfg.name, cfg.data_dir = name, str(tmp_path)
  if message is None:
    dataset = data.load(cfg)
    assert dataset.num_classes == 3 and len(dataset.y_test) == 12
    return
  with pytest.raises(UserError, match=f"^TFDS dataset '{name}'") as raised:
    data.load(cfg)
  assert re.search(message, str(raised.value)) and '\n' not in str(raised.value), raised.value


def test_tfds_ids_as_labels_prepared_as_tfrecord_are_one_line(small_config, tmp_path):
  """The tf.data reader checks labels as the array_record one does. Prepared in a subprocess:
  TFDS's tfrecord writer hung inside the test process."""
  import subprocess
  import sys
  from conftest import REPO
  prepare = f"""
import sys; sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import numpy as np, tensorflow_datasets as tfds
from helpers import tiny_images_builder
tiny_images_builder.labelled('SparseIdLabels', tfds.features.Tensor(shape=(), dtype=np.int64),
                             lambda i: [0, 3, 7, 10 ** 9][i % 4])
tfds.builder('sparse_id_labels', data_dir={str(tmp_path)!r}).download_and_prepare()
"""
  done = subprocess.run([sys.executable, '-c', prepare], capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  from helpers import tiny_images_builder  # tfds.list_builders() would ask the network
  tiny_images_builder.labelled('SparseIdLabels', *ENCODINGS['sparse_id_labels'][:2])
  cfg = small_config.dataset
  cfg.name, cfg.data_dir = 'sparse_id_labels', str(tmp_path)
  with pytest.raises(UserError, match=ENCODINGS['sparse_id_labels'][2]):
    data.load(cfg)
