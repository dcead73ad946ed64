"""Each check with a threshold, on a planted case just beyond it (flagged) and one just inside
it (not flagged): the threshold is where the docs say, and the measurement that meets it is the
one described. Planted with exact constructions (quantiles, exact fractions), so each case sits
a known distance from its threshold."""
import numpy as np
import pytest
from scipy import stats

from recipe_jax.config import defaults
from recipe_jax.diagnose import checks, data_checks, shift_checks

DEFAULTS = defaults.get_config()


@pytest.mark.parametrize('gain, status', [(0.055, 'PASS'), (0.045, 'FAIL')])
def test_dumb_baselines_margin(gain, status):
  margin = DEFAULTS.sanity.baseline_margin
  labels = np.arange(200) % 4
  v = checks.dumb_baselines(labels, [0.25] * 4, {'accuracy': 0.30, 'loss': 1.38},
                            {'accuracy': 0.30 + gain, 'loss': 1.2}, margin)
  assert v.status == status, v.summary
  if status == 'FAIL':
    assert 'does not use its inputs' in v.summary


def loss_curve(drop: float, steps: int = 100) -> np.ndarray:
  """1.0 over the first tenth, 1 - drop over the last tenth, linear between: the relative drop
  of the window means is exactly `drop`."""
  return np.interp(np.arange(steps), [0, 9, 90, 99], [1.0, 1.0, 1.0 - drop, 1.0 - drop])


@pytest.mark.parametrize('drop, status', [(0.102, 'PASS'), (0.098, 'FAIL')])
def test_decreasing_loss_minimum_drop(drop, status):
  v = checks.decreasing_loss(loss_curve(drop), DEFAULTS.sanity.min_loss_drop)
  assert v.evidence['relative_drop'] == pytest.approx(drop)
  assert v.status == status, v.summary


@pytest.mark.parametrize('factor, status', [(0.95, 'FAIL'), (1.05, 'PASS')])
def test_near_duplicate_leakage_distance(factor, status):
  """One test example is a training example moved by `factor` x the threshold (RMS, in the
  train-standardised space); the other test examples are unrelated draws."""
  threshold = DEFAULTS.inspect.leakage_rms_threshold
  rng = np.random.default_rng(0)
  x_train = rng.normal(size=(300, 16)).astype(np.float32)
  x_test = rng.normal(size=(20, 16)).astype(np.float32)
  direction = rng.normal(size=16)
  direction /= np.sqrt(np.mean(direction ** 2))  # RMS 1
  x_test[7] = x_train[42] + factor * threshold * direction * x_train.std(0)
  splits = {'train': (x_train, np.zeros(300, int)), 'test': (x_test, np.zeros(20, int))}
  [v] = data_checks.near_duplicate_leakage(splits, threshold)
  assert v.status == status, v.summary
  if status == 'FAIL':
    assert v.evidence['leaked_test_indices'] == [7] and v.evidence['nearest_indices'] == [42]
    assert v.evidence['rms_distances'][0] == pytest.approx(factor * threshold, rel=0.01)


@pytest.mark.parametrize('ks, status', [(0.11, 'WARN'), (0.09, 'PASS')])
def test_feature_drift_minimum_ks_statistic(ks, status):
  """Feature 0 of the other split is shifted so that its KS statistic against the reference is
  `ks` (normal quantiles: exact up to 1/n); with 3000 examples each, any such shift is
  significant, so the minimum effect decides."""
  n = 3000
  quantiles = stats.norm.ppf((np.arange(n) + 0.5) / n)
  shift = 2 * stats.norm.ppf(0.5 + ks / 2)  # KS of N(0, 1) against N(shift, 1)
  rng = np.random.default_rng(0)
  x_ref = np.stack([quantiles, *rng.permutation(np.tile(quantiles, (4, 1)).T).T], 1)
  x_other = x_ref.copy()
  x_other[:, 0] += shift
  v = shift_checks.feature_drift(x_ref, x_other, ('train', 'test'), n,
                                 DEFAULTS.inspect.drift_alpha, DEFAULTS.inspect.drift_min_ks)
  assert v.evidence['ks_by_feature'][0] == pytest.approx(ks, abs=2 / n)
  assert v.status == status, v.summary
  if status == 'WARN':
    assert v.evidence['drifted_features'] == [0]


@pytest.mark.parametrize('share, status', [(0.86, 'WARN'), (0.74, 'PASS')])
def test_shortcut_feature_score(share, status):
  """Feature 3 equals the (balanced, binary) label on `share` of the rows and is a fair coin on
  the others, so its accuracy alone is share + (1 - share) / 2: a score of `share` on the way
  from the majority class to perfect. The other features are noise."""
  n = 2000
  rng = np.random.default_rng(0)
  y = rng.permutation(np.arange(n) % 2)
  informed = rng.permutation(np.arange(n) < round(share * n))
  coin = rng.permutation(np.arange(n) % 2)
  x = rng.normal(size=(n, 12))
  x[:, 3] = np.where(informed, y, coin) + 0.01 * rng.normal(size=n)
  threshold = DEFAULTS.inspect.shortcut_score
  v = shift_checks.shortcut_features(x, y, 2, n, threshold=threshold)
  assert v.evidence['best_feature'] == 3
  assert v.evidence['best_feature_score'] == pytest.approx(share, abs=0.04)
  assert v.status == status, v.summary
