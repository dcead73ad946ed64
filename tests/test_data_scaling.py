"""stage='data_scaling': nested subsets, the power-law fit and its verdicts."""
import json
import os

import ml_collections
import numpy as np
import pytest

from recipe_jax.config import check as config_check
from recipe_jax.data import datasets as data
from recipe_jax.diagnose import learning_curve
from recipe_jax.errors import UserError
from recipe_jax.stages import data_scaling

CFG = ml_collections.ConfigDict(dict(max_fit_rms=0.02, flat_gain=0.005, max_gain_range=0.03))
SIZES = np.repeat([250, 500, 1000, 2000, 4000], 2)  # two seeds each


def test_the_fit_recovers_a_known_exponent_and_extrapolates_the_gain():
  rng = np.random.default_rng(0)
  errors = 3 * SIZES ** -0.6 + 0.02 + rng.normal(0, 0.002, len(SIZES))
  found = learning_curve.fit(SIZES, errors)
  assert found['b'] == pytest.approx(0.6, abs=0.15)
  true_gain = 3 * 4000 ** -0.6 - 3 * 8000 ** -0.6
  assert found['gain_2x'] == pytest.approx(true_gain, abs=0.003)
  verdict = learning_curve.verdict(found, CFG)
  assert verdict.status == 'PASS' and 'doubling the data would gain about' in verdict.summary


def test_a_saturated_curve_is_called_flattened():
  errors = 0.08 + np.random.default_rng(1).normal(0, 0.003, len(SIZES))
  verdict = learning_curve.verdict(learning_curve.fit(SIZES, errors), CFG)
  assert verdict.status == 'PASS' and 'flattened' in verdict.summary


def test_a_fit_that_flattens_while_the_last_step_still_gains_warns():
  # Steep early, then a last doubling that still gains 1.5%: the fit alone would say "flat".
  accuracy = np.repeat([0.885, 0.93, 0.9375, 0.9525], 2) + np.tile([-0.005, 0.005], 4)
  found = learning_curve.fit(np.repeat([475, 950, 1900, 3800], 2), 1 - accuracy)
  verdict = learning_curve.verdict(found, CFG)
  assert verdict.status == 'WARN' and 'still gained 1.5%' in verdict.summary


def test_a_fit_without_a_usable_uncertainty_warns_instead_of_passing():
  """Three points for three parameters: the fit goes through them and its covariance is not
  finite. The point estimate alone used to PASS."""
  n = np.array([500.0, 1000.0, 2000.0])
  found = learning_curve.fit(n, learning_curve.power_law(n, 3.0, 0.5, 0.05))
  assert found['uncertainty_known'] is False
  verdict = learning_curve.verdict(found, CFG)
  assert verdict.status == 'WARN' and "uncertainty cannot be estimated" in verdict.summary


def test_a_curve_the_power_law_cannot_follow_warns_instead_of_giving_a_number():
  zigzag = np.where(np.arange(len(SIZES)) // 2 % 2 == 0, 0.35, 0.05)
  verdict = learning_curve.verdict(learning_curve.fit(SIZES, zigzag), CFG)
  assert verdict.status == 'WARN' and 'misses its points' in verdict.summary


def test_subsets_are_nested_and_a_pure_function_of_the_seed():
  small, large = data.nested_subset(1000, 0.25, 3), data.nested_subset(1000, 0.5, 3)
  assert len(small) == 250 and set(small) <= set(large)
  np.testing.assert_array_equal(small, data.nested_subset(1000, 0.25, 3))
  assert set(small) != set(data.nested_subset(1000, 0.25, 4))
  with pytest.raises(UserError, match='train_fraction'):
    data.nested_subset(1000, 0.0, 0)


def test_a_training_subset_keeps_the_validation_split(small_config):
  full = data.load(small_config.dataset)
  small_config.dataset.train_fraction, small_config.dataset.subset_seed = 0.25, 1
  part = data.load(small_config.dataset)
  np.testing.assert_array_equal(part.val_rows, full.val_rows)
  assert len(part.y_train) == round(0.25 * len(full.y_train))
  assert set(part.train_rows) <= set(full.train_rows)


def test_data_scaling_stage_trains_each_subset_and_reuses_finished_runs(small_config, tmp_path,
                                                                        caplog):
  small_config.stage = 'data_scaling'
  small_config.data_scaling.fractions = (0.25, 0.5, 1.0)
  small_config.data_scaling.seeds = 1
  result = data_scaling.run(small_config, str(tmp_path))
  [verdict] = result.verdicts
  assert verdict.check == 'more_data' and result.metrics['largest_n'] == 3600
  for f in result.files:
    assert os.path.getsize(tmp_path / f) > 0
  rows = open(tmp_path / 'data_scaling' / 'results.csv').read().splitlines()
  assert [r.split(',')[2] for r in rows[1:]] == ['900', '1800', '3600']
  with caplog.at_level('INFO'):
    data_scaling.run(small_config, str(tmp_path))
  assert 'data_scaling: training' not in caplog.text
  small_config.data_scaling.fractions = (0.5, 1.0)
  with pytest.raises(UserError, match='at least 3'):
    config_check.check_values(small_config)


def test_fractions_are_of_what_the_config_trains_on_and_the_axis_counts_those_examples(
    small_config, tmp_path):
  """With dataset.train_fraction=0.5 set already, the x-axis counted the wrong examples."""
  small_config.dataset.train_fraction = 0.5
  small_config.data_scaling.fractions = (0.25, 0.5, 1.0)
  small_config.data_scaling.seeds = 1
  small_config.num_train_steps = 20
  result = data_scaling.run(small_config, str(tmp_path))
  rows = open(tmp_path / 'data_scaling' / 'results.csv').read().splitlines()
  assert [r.split(',')[2] for r in rows[1:]] == ['450', '900', '1800']  # of 1800, not 3600
  assert result.metrics['largest_n'] == 1800
  summary = json.loads((tmp_path / 'data_scaling' / 'fraction_0.25' / 'seed_0' /
                        'summary.json').read_text())
  assert summary['train_examples'] == 450  # what the run really trained on
