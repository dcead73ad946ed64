"""Train against test: drift of features and labels, a domain classifier, a model of train
tested on test, shortcut features. Quiet on the clean embedded datasets; each planted defect
(the issue's and our own) is caught, by the check that names it."""
import json

import numpy as np
import pytest

from recipe_jax.config import defaults
from recipe_jax.data import datasets as data
from recipe_jax.diagnose import shift_checks
from recipe_jax.stages import inspect, train


@pytest.fixture(scope='module')
def digits(data_dir_module):
  c = defaults.get_config().dataset
  c.name, c.data_dir, c.normalize, c.val_fraction = 'digits', data_dir_module, False, 0.0
  d = data.load(c)
  return d.x_train, d.y_train, d.x_test, d.y_test


@pytest.fixture(scope='module')
def data_dir_module(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_shift'))


def shift_statuses(x_train, y_train, x_test, y_test):
  names = ('train', 'test')
  return {v.check: v.status for v in (
      shift_checks.feature_drift(x_train, x_test, names, 5000),
      shift_checks.domain_classifier(x_train, x_test, names, 5000),
      shift_checks.label_drift(y_train, y_test, 10, names),
      shift_checks.train_to_test(x_train, y_train, x_test, y_test, 10, names, 5000),
      shift_checks.shortcut_features(x_train, y_train, 10, 5000))}


def plant(name, x_train, y_train, x_test, y_test):
  """The planted copies of digits: (x_train, y_train, x_test, y_test)."""
  rng = np.random.default_rng(0)
  if name == 'test inputs x3':
    return x_train, y_train, 3 * x_test, y_test
  if name == 'a feature encodes the label':
    x_train, x_test = x_train.copy(), x_test.copy()
    x_train[:, 0, 0, 0], x_test[:, 0, 0, 0] = 1.5 * y_train, 1.5 * y_test
    return x_train, y_train, x_test, y_test
  if name == 'test labels recoded':
    return x_train, y_train, x_test, np.roll(np.arange(10), 3)[y_test]
  if name == 'test holds 3 of 10 classes':
    keep = np.isin(y_test, [0, 1, 2])
    return x_train, y_train, x_test[keep], y_test[keep]
  if name == 'test shifted by one pixel':  # our own: a crop done differently for test
    return x_train, y_train, np.roll(x_test, 1, axis=2), y_test
  if name == 'test inputs noisy':  # our own: another sensor
    return x_train, y_train, x_test + rng.normal(0, 3, x_test.shape), y_test
  if name == 'a watermark on half the train classes':  # our own: absent from test
    x_train = x_train.copy()
    x_train[y_train % 2 == 0, 6:8, 6:8, 0] = 16.0
    return x_train, y_train, x_test, y_test
  raise KeyError(name)


# planted defect -> the checks that must not PASS
CAUGHT_BY = {
    'test inputs x3': {'feature_drift_test': 'FAIL', 'domain_classifier_test': 'FAIL',
                       'train_to_test': 'FAIL'},
    'a feature encodes the label': {'shortcut_features': 'WARN'},
    'test labels recoded': {'train_to_test': 'FAIL'},
    'test holds 3 of 10 classes': {'label_drift_test': 'FAIL'},
    'test shifted by one pixel': {'feature_drift_test': 'FAIL', 'domain_classifier_test': 'FAIL'},
    'test inputs noisy': {'domain_classifier_test': 'FAIL'},
    'a watermark on half the train classes': {'domain_classifier_test': 'WARN'},
}


def test_clean_digits_pass_every_shift_check(digits):
  assert set(shift_statuses(*digits).values()) == {'PASS'}


@pytest.mark.parametrize('defect', CAUGHT_BY)
def test_a_planted_defect_is_caught_by_its_check(digits, defect):
  found = shift_statuses(*plant(defect, *digits))
  for check, status in CAUGHT_BY[defect].items():
    assert found[check] == status, found


def test_a_recoded_label_is_named_with_the_class_it_became(digits):
  x_train, y_train, x_test, y_test = plant('test labels recoded', *digits)
  verdict = shift_checks.train_to_test(x_train, y_train, x_test, y_test, 10,
                                       ('train', 'test'), 5000)
  moved = {m['label']: m['predicted']
           for m in verdict.evidence['test_labels_mostly_predicted_as']}
  assert moved == {label: (label + 3) % 10 for label in range(10)}  # np.roll by 3, undone


def test_train_to_test_compares_the_same_models_on_both_and_says_which_is_higher(digits):
  verdict = shift_checks.train_to_test(*digits, 10, ('train', 'test'), 5000)
  held_out, test = verdict.evidence['train_held_out_accuracy'], verdict.evidence['test_accuracy']
  assert verdict.status == 'PASS'
  assert (f'reaches {test:.1%} on test and {held_out:.1%} on the other half of train: test '
          f'{abs(verdict.evidence["z"]):.1f} standard errors '
          f'{"lower" if test < held_out else "higher"}') in verdict.summary


def test_drift_and_shortcuts_name_features_by_position(digits):
  x_train, y_train, x_test, y_test = plant('a feature encodes the label', *digits)
  shortcut = shift_checks.shortcut_features(x_train, y_train, 10, 5000)
  assert shortcut.evidence['features'][0] == 0 and shortcut.evidence['feature_positions'][0] == [
      0, 0, 0]
  assert 'feature 0 (0, 0, 0)' in shortcut.summary
  drift = shift_checks.feature_drift(x_train, np.roll(x_test, 1, axis=2), ('train', 'test'), 5000)
  assert all(len(p) == 3 for p in drift.evidence['drifted_positions'])


def test_large_splits_are_subsampled_to_the_cap():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20000, 30))
  y = rng.integers(0, 4, 20000)
  verdict = shift_checks.feature_drift(x, x[:15000] + 0.0, ('train', 'test'), 1000)
  assert verdict.evidence['examples'] == [1000, 1000] and verdict.status == 'PASS'
  assert shift_checks.shortcut_features(x, y, 4, 1000).evidence['examples'] == 1000


def test_inspect_on_a_planted_npz_warns_and_draws_where(tmp_path, digits):
  x_train, y_train, x_test, y_test = plant('test inputs x3', *digits)
  path = tmp_path / 'scaled.npz'
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  c = defaults.get_config()
  c.dataset.name = f'npz:{path}'
  c.inspect.cv_steps, c.inspect.cv_folds = 100, 3
  result = inspect.run(c, str(tmp_path / 'run'))
  found = {v.check: v for v in result.verdicts}
  assert found['feature_drift_test'].status == 'FAIL'
  assert found['domain_classifier_test'].evidence['least_like_train']['source_split'] == 'test'
  for picture in ('drift_test.png', 'least_like_train_test.png'):
    assert (tmp_path / 'run' / 'inspect' / picture).stat().st_size > 5000
  assert found['feature_drift_val'].status == 'PASS'  # validation is carved from train


def test_a_train_run_warns_when_test_is_far_below_validation(small_config, tmp_path, digits):
  x_train, y_train, x_test, y_test = plant('test labels recoded', *digits)
  path = tmp_path / 'recoded.npz'
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  small_config.dataset.name = f'npz:{path}'
  small_config.num_train_steps = 300
  small_config.analysis.enabled = False
  result = train.run(small_config, str(tmp_path / 'run'))
  [verdict] = [v for v in result.verdicts if v.check == 'val_vs_test']
  assert verdict.status == 'WARN' and 'labels coded differently' in verdict.summary
  assert verdict.evidence['z'] > 10
  summary = json.load(open(tmp_path / 'run' / 'summary.json'))
  clean = dict(summary, test_accuracy=summary['eval_accuracy'] - 0.01)  # a point of noise
  assert train.val_vs_test(clean).status == 'PASS'
