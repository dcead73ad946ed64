"""Test-set saturation on planted pairs of models: one the test set cannot separate, one it can,
and pairs on both sides of McNemar's 5% line; few errors left; the squeeze and evaluate stages
state it."""
import math

import numpy as np
import pytest

from recipe_jax.diagnose import noise, saturation


def planted(n=1000, errors=30, a_only=0, b_only=0, seed=0):
  """Labels and two models' predictions: A makes `errors` mistakes; B is wrong where A is right
  on `a_only` examples and right where A is wrong on `b_only`."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n)
  wrong = lambda y: (y + 1) % 10
  a = labels.copy()
  a_wrong = rng.choice(n, errors, replace=False)
  a[a_wrong] = wrong(labels[a_wrong])
  b = a.copy()
  a_right = np.setdiff1d(np.arange(n), a_wrong)
  b[a_right[:a_only]] = wrong(labels[a_right[:a_only]])
  b[a_wrong[:b_only]] = labels[a_wrong[:b_only]]
  return labels, a, b


def test_a_pair_the_test_set_cannot_separate_warns_with_how_many_examples_would():
  labels, a, b = planted(errors=30, a_only=15, b_only=10)  # 97.0% against 96.5%
  v = saturation.verdict(labels, {'ensemble': a, 'best member': b})
  assert v.status == 'WARN', v.summary
  assert 'the test set cannot tell it from best member' in v.summary
  assert 'right on 15 examples best member gets wrong, and wrong on 10' in v.summary
  assert v.evidence['p_value'] == pytest.approx(0.4244, abs=1e-3)
  # Connor's paired sample size: q = 0.025, d = 0.005
  q, d = 0.025, 0.005
  expected = (1.959964 * math.sqrt(q) + 0.841621 * math.sqrt(q - d ** 2)) ** 2 / d ** 2
  assert v.evidence['examples_to_resolve'] == pytest.approx(expected)
  assert f'about {expected:,.0f} test examples' in v.summary and '(7.8x this test set)' in v.summary
  assert '30 test errors left of 1000; accuracy 97.00% (95% interval 95.75% to 97.89%)' in v.summary


def test_a_pair_the_test_set_separates_passes():
  labels, a, b = planted(errors=30, a_only=30, b_only=5)
  v = saturation.verdict(labels, {'ensemble': a, 'best member': b})
  assert v.status == 'PASS' and 'the test set tells it from best member' in v.summary, v.summary
  assert v.evidence['p_value'] < 1e-4


@pytest.mark.parametrize('a_only, b_only, status', [(15, 5, 'PASS'),  # p = 0.041
                                                    (16, 6, 'WARN')])  # p = 0.052
def test_mcnemars_line_at_five_percent(a_only, b_only, status):
  labels, a, b = planted(errors=40, a_only=a_only, b_only=b_only)
  v = saturation.verdict(labels, {'A': a, 'B': b})
  assert v.status == status, v.summary
  assert (v.evidence['p_value'] < 0.05) == (status == 'PASS')


@pytest.mark.parametrize('errors, status', [(19, 'WARN'), (20, 'PASS')])
def test_fewer_than_twenty_errors_left_is_a_saturated_test_set(errors, status):
  labels, a, _ = planted(errors=errors)
  v = saturation.verdict(labels, {'the model': a})
  assert v.status == status, v.summary
  assert ('fewer than 20 errors are left' in v.summary) == (status == 'WARN')
  assert v.evidence['errors_left'] == errors


def test_identical_models_have_nothing_to_resolve():
  labels, a, _ = planted(errors=30)
  v = saturation.verdict(labels, {'ensemble': a, 'member': a.copy()})
  assert v.status == 'PASS' and 'gets the same examples right and wrong' in v.summary
  assert math.isinf(v.evidence['examples_to_resolve'])


def test_models_of_equal_accuracy_that_disagree_are_not_called_identical():
  labels, a, b = planted(errors=30, a_only=12, b_only=12)
  v = saturation.verdict(labels, {'ensemble': a, 'member': b})
  assert v.status == 'PASS' and 'same accuracy on this test set, right and wrong on 12 ' in (
      v.summary), v.summary


def test_an_empty_test_split_is_a_warning_not_a_crash():
  v = saturation.verdict(np.zeros(0, int), {'the model': np.zeros(0, int)})
  assert v.status == 'WARN' and 'the test split is empty' in v.summary


def test_the_interval_is_wilsons():
  low, high = noise.accuracy_interval(np.array([True] * 97 + [False] * 3))
  assert low == pytest.approx(0.9154, abs=1e-3) and high == pytest.approx(0.9897, abs=1e-3)
