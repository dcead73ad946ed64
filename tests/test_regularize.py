"""Recipe step 4 switches: augmentation, dropout, label smoothing, EMA, early stopping."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import read_summary
from recipe_jax.config import check as config_check, defaults
from recipe_jax.model import augment, losses, models
from recipe_jax.errors import UserError
from recipe_jax.stages import train
from recipe_jax.engine import steps


def settings(**changes):
  cfg = defaults.get_config().augment
  cfg.update(changes)
  return augment.settings(cfg, num_classes=10)


def gathered(augmentation, step=0, offset=0, size=8, seed=0, x_all=None):
  x_all = np.arange(16 * 40, dtype=np.float32).reshape(16, 40) if x_all is None else x_all
  y_all = np.arange(len(x_all), dtype=np.int32) % 10
  perm = np.arange(len(x_all))
  x, y = steps.batch_inputs(x_all, y_all, perm, step, 8, 2, offset, size, seed, augmentation)
  return np.asarray(x), np.asarray(y), x_all[perm[(step % 2) * 8 + offset:][:size]]


def test_augmentation_is_off_by_default():
  assert augment.settings(defaults.get_config().augment) is None
  x, _, raw = gathered(None)
  np.testing.assert_array_equal(x, raw)


def test_1d_augmentation_changes_inputs_not_labels_and_is_a_pure_function_of_seed_and_step():
  s = settings(shift=5, scale=0.2, noise=0.0)
  x, y, raw = gathered(s)
  clean_x, clean_y, _ = gathered(None)
  assert not np.allclose(x, raw)
  np.testing.assert_array_equal(y, clean_y)
  np.testing.assert_array_equal(x, gathered(s)[0])  # same (seed, step): same batch
  assert not np.allclose(x, gathered(s, seed=1)[0])
  # Steps 2 and 4 gather the same rows (2 steps per epoch) but augment them differently.
  assert not np.allclose(gathered(s, step=2)[0], gathered(s, step=4)[0])
  # Each augmented row is its input rolled by at most 5 and scaled by a factor in [0.8, 1.2].
  for row, original in zip(x, raw):
    fits = []
    for k in range(-5, 6):
      rolled = np.roll(original, k)
      factor = row @ rolled / (rolled @ rolled)
      fits.append(np.allclose(row, factor * rolled, rtol=1e-4) and 0.8 <= factor <= 1.2)
    assert any(fits)


def test_augmentation_does_not_depend_on_how_the_batch_is_split_over_devices():
  s = settings(shift=3, noise=0.1)
  whole = gathered(s, size=8)[0]
  halves = np.concatenate([gathered(s, offset=0, size=4)[0], gathered(s, offset=4, size=4)[0]])
  np.testing.assert_array_equal(whole, halves)


def test_mixup_targets_sum_to_one_and_match_the_mixing_weights():
  s = settings(mixup=0.4)
  x, targets, raw = gathered(s)
  x_all = np.arange(16 * 40, dtype=np.float32).reshape(16, 40)
  y_all = np.arange(16) % 10
  partner, lam, use_cutmix = map(np.asarray, augment.mix_draws(s, 0, 0, np.arange(8), 16))
  assert not use_cutmix.any() and 0 < lam.min() and lam.max() < 1
  np.testing.assert_allclose(targets.sum(1), 1, rtol=1e-6)
  expected = lam[:, None] * np.eye(10)[y_all[:8]] + (1 - lam[:, None]) * np.eye(10)[y_all[partner]]
  np.testing.assert_allclose(targets, expected, rtol=1e-6)
  np.testing.assert_allclose(x, lam[:, None] * raw + (1 - lam[:, None]) * x_all[partner],
                             rtol=1e-5)


def test_cutmix_pastes_a_segment_whose_length_is_the_partners_weight():
  s = settings(cutmix=1.0)
  x, targets, raw = gathered(s)
  partner, _, use_cutmix = map(np.asarray, augment.mix_draws(s, 0, 0, np.arange(8), 16))
  x_all = np.arange(16 * 40, dtype=np.float32).reshape(16, 40)
  assert use_cutmix.all()
  np.testing.assert_allclose(targets.sum(1), 1, rtol=1e-6)
  own = (x == raw).mean(1)  # the rows differ everywhere, so equality marks kept positions
  np.testing.assert_array_equal((x == raw) | (x == x_all[partner]), True)
  y_all = np.arange(16) % 10
  np.testing.assert_allclose(targets[np.arange(8), y_all[:8]],
                             np.where(y_all[partner] == y_all[:8], 1.0, own), atol=1e-6)


def test_mixing_with_alpha_zero_is_the_unmixed_batch_with_integer_labels():
  plain = gathered(settings(shift=3))
  zero = gathered(settings(shift=3, mixup=0.0, cutmix=0.0))
  np.testing.assert_array_equal(plain[0], zero[0])
  assert zero[1].ndim == 1 and zero[1].dtype.kind == 'i'


def test_mixing_does_not_depend_on_how_the_batch_is_split_over_devices():
  s = settings(shift=2, mixup=0.3, cutmix=1.0)
  whole_x, whole_y, _ = gathered(s, size=8)
  halves = [gathered(s, offset=o, size=4) for o in (0, 4)]
  np.testing.assert_array_equal(whole_x, np.concatenate([h[0] for h in halves]))
  np.testing.assert_array_equal(whole_y, np.concatenate([h[1] for h in halves]))


def test_label_smoothing_composes_with_soft_targets():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  soft = jnp.array([[0.7, 0.3, 0.0]])
  smoothed = losses.create('cross_entropy', 0.3)(logits, soft)
  expected = optax.softmax_cross_entropy(logits, 0.7 * soft + 0.1)
  np.testing.assert_allclose(smoothed, expected, rtol=1e-6)
  np.testing.assert_allclose(losses.cross_entropy(logits, jnp.array([0])),
                             losses.cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]])),
                             rtol=1e-6)


def test_mixing_needs_a_loss_that_takes_soft_targets(small_config):
  from recipe_jax.engine import experiment
  small_config.augment.mixup = 0.2
  small_config.loss = 'helpers.planted_bugs:doubled_cross_entropy'
  with pytest.raises(UserError, match='soft targets'):
    experiment.build(small_config)


def test_image_crop_and_flip_keep_shape_and_content():
  images = np.random.default_rng(0).standard_normal((16, 6, 6, 3)).astype(np.float32)
  x, _, raw = gathered(settings(crop_padding=2, flip=True), x_all=images)
  assert x.shape == raw.shape and not np.allclose(x, raw)
  flipped_only = gathered(settings(flip=True), x_all=images)[0]
  for row, original in zip(flipped_only, raw):
    assert np.allclose(row, original) or np.allclose(row, original[:, ::-1])


def test_dropout_is_on_in_training_and_off_in_eval():
  config = ml_collections.ConfigDict({'name': 'mlp', 'width': 32, 'dropout': 0.5})
  model = models.create(config, num_classes=10)
  plain = models.create(ml_collections.ConfigDict({'name': 'mlp', 'width': 32}), 10)
  x = jax.random.normal(jax.random.key(0), (4, 40))
  variables = model.init(jax.random.key(1), x)
  np.testing.assert_array_equal(model.apply(variables, x), plain.apply(variables, x))
  in_training = [model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(k)})
                 for k in (2, 3)]
  assert not np.allclose(in_training[0], in_training[1])
  with pytest.raises(UserError, match="model.dropout is for .*'gru' does not take it"):
    models.create(ml_collections.ConfigDict({'name': 'gru', 'width': None, 'dropout': 0.1}), 10)


def test_label_smoothing_mixes_the_target_with_uniform():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  smoothed = losses.create('cross_entropy', 0.3)(logits, jnp.array([0]))
  log_p = jax.nn.log_softmax(logits)[0]
  expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
  np.testing.assert_allclose(smoothed[0], expected, rtol=1e-6)
  with pytest.raises(UserError, match="label_smoothing applies to loss 'cross_entropy'"):
    config_check.check_values({**config_check.flatten(defaults.get_config()),
                               'label_smoothing': 0.1, 'loss': 'my.module:loss'})


def test_ema_leaves_training_alone_and_is_what_eval_sees(small_config, tmp_path):
  train.run(small_config, str(tmp_path / 'plain'))
  small_config.ema_decay = 0.9
  train.run(small_config, str(tmp_path / 'ema'))
  plain, ema = read_summary(tmp_path / 'plain'), read_summary(tmp_path / 'ema')
  assert plain['params_sha256'] == ema['params_sha256']
  assert plain['eval_loss'] != ema['eval_loss']


def test_early_stopping_stops_and_restores_the_best_checkpoint(small_config, tmp_path):
  small_config.num_train_steps = 400
  small_config.eval_every_steps = 20
  small_config.checkpoint_every_steps = 100
  small_config.optimizer.learning_rate = 0.05  # overshoots: validation accuracy stalls early
  small_config.early_stopping.patience = 3
  small_config.early_stopping.min_delta = 0.005
  train.run(small_config, str(tmp_path))
  summary = read_summary(tmp_path)
  assert summary['stopped_early'] and summary['finished'] and summary['step'] < 400
  evals = [h['eval_accuracy'] for h in summary['history']]
  assert len(evals) == summary['step'] // 20
  best = summary['best_eval_step']
  assert summary['final_state_step'] == best < summary['step']
  assert summary['eval_accuracy'] == pytest.approx(summary['best_eval_accuracy'])
  assert os.listdir(tmp_path / 'checkpoints_best') == [str(best)]
  assert 'test_accuracy' in summary
  train.run(small_config, str(tmp_path))  # a restart does not train on
  assert read_summary(tmp_path)['step'] == summary['step']


def test_downsampling_averages_blocks_of_signals_and_images():
  from recipe_jax.data import datasets as data
  signals = np.arange(12, dtype=np.float32).reshape(2, 6)
  np.testing.assert_array_equal(data.downsample(signals, 2), [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]])
  images = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  small = data.downsample(images, 2)
  assert small.shape == (2, 2, 2, 3)
  np.testing.assert_allclose(small[0, 0, 0], images[0, :2, :2].mean(axis=(0, 1)))
  with pytest.raises(UserError, match='must divide'):
    data.downsample(signals, 4)


def test_downsampled_dataset_trains(small_config, tmp_path):
  from recipe_jax.data import datasets as data
  small_config.dataset.downsample = 2
  assert data.load(small_config.dataset).x_train.shape[1:] == (20,)  # mnist1d: 40 -> 20
  small_config.num_train_steps = 30
  train.run(small_config, str(tmp_path))
  assert read_summary(tmp_path)['finished']


def test_depth_changes_the_number_of_layers():
  def layers(name, depth):
    config = ml_collections.ConfigDict({'name': name, 'width': None, 'depth': depth})
    model = models.create(config, num_classes=10)
    return len(model.init(jax.random.key(0), jnp.zeros((1, 40)))['params'])
  assert layers('mlp', None) == 3 and layers('mlp', 4) == 5  # hidden layers + classifier
  assert layers('cnn1d', None) == 4 and layers('cnn1d', 2) == 3
  with pytest.raises(UserError, match='model.depth is for'):
    models.create(ml_collections.ConfigDict({'name': 'gru', 'width': None, 'depth': 2}), 10)


def test_a_resumed_run_with_every_random_regulariser_is_bit_identical(small_config, tmp_path):
  small_config.augment.shift, small_config.augment.scale = 3, 0.1
  small_config.augment.noise = 0.05
  small_config.augment.mixup, small_config.augment.cutmix = 0.4, 1.0
  small_config.model.dropout = 0.2
  small_config.ema_decay = 0.9
  train.run(small_config, str(tmp_path / 'straight'))
  small_config.num_train_steps = 30
  train.run(small_config, str(tmp_path / 'resumed'))
  small_config.num_train_steps = 60
  train.run(small_config, str(tmp_path / 'resumed'))
  resumed = read_summary(tmp_path / 'resumed')
  assert resumed['resumed_from_step'] == 30
  assert resumed['params_sha256'] == read_summary(tmp_path / 'straight')['params_sha256']
  assert resumed['eval_loss'] == read_summary(tmp_path / 'straight')['eval_loss']  # EMA too


def test_sanity_shows_a_mixed_examples_soft_label():
  from recipe_jax.stages import sanity
  assert sanity._label_text(np.array([0.0, 0.7, 0.3])) == '1:0.70 2:0.30'
  assert sanity._label_text(np.int32(4)) == 'y=4'
