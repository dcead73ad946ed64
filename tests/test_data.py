import numpy as np
import pytest
import tensorflow_datasets as tfds

from recipe_jax import data
from recipe_jax.errors import UserError


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
  first = data.batch_indices(seed=3, step=17, num_examples=1000, batch_size=100)
  again = data.batch_indices(seed=3, step=17, num_examples=1000, batch_size=100)
  np.testing.assert_array_equal(first, again)
  other_seed = data.batch_indices(seed=4, step=17, num_examples=1000, batch_size=100)
  assert not np.array_equal(first, other_seed)
  epoch = np.concatenate([data.batch_indices(3, s, 1000, 100) for s in range(10)])
  assert sorted(epoch) == list(range(1000))  # one epoch visits every example once
  next_epoch = np.concatenate([data.batch_indices(3, s, 1000, 100) for s in range(10, 20)])
  assert not np.array_equal(epoch, next_epoch)  # and each epoch is reshuffled


def test_batch_larger_than_train_split_is_a_user_error():
  with pytest.raises(UserError, match='batch_size=500 is larger'):
    data.steps_per_epoch(400, 500)


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


def test_npz_missing_arrays_are_named(small_config, tmp_path):
  _write_npz(tmp_path / 'bad.npz', y_test=None)
  small_config.dataset.name = f'npz:{tmp_path / "bad.npz"}'
  with pytest.raises(UserError, match='lacks y_test'):
    data.load(small_config.dataset)


def test_tfds_datasets_load_through_the_tfds_layer(small_config, tmp_path):
  small_config.dataset.name = 'mnist'
  small_config.dataset.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=50):
    ds = data.load(small_config.dataset)
  assert ds.x_train.shape == (45, 28, 28, 1) and ds.x_val.shape == (5, 28, 28, 1)
  assert ds.x_test.shape == (50, 28, 28, 1) and ds.num_classes == 10


def test_missing_tfds_data_offline_says_where_to_put_it(small_config, tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_online', lambda: False)
  small_config.dataset.name = 'mnist'
  small_config.dataset.data_dir = str(tmp_path)
  with pytest.raises(UserError, match=f'not prepared under {tmp_path}/mnist .*offline'):
    data.load(small_config.dataset)


def test_two_processes_preparing_an_embedded_dataset_at_once_both_load_it(tmp_path):
  """Sweep workers start together on a fresh machine: they raced to rename TFDS's directory
  (FileExistsError), and the loser read an empty dataset."""
  import subprocess
  import sys
  code = ('from recipe_jax import data, defaults; c = defaults.get_config(); '
          f'c.dataset.name = "digits"; c.dataset.data_dir = "{tmp_path}"; '
          'print(len(data.load(c.dataset).y_train))')
  workers = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [w.communicate(timeout=240) for w in workers]
  assert [w.returncode for w in workers] == [0, 0], results[1][1][-2000:]
  assert [out.strip() for out, _ in results] == ['1293', '1293']  # 1437 less validation
