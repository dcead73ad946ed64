"""Each data check must catch its planted defect and stay quiet on clean data."""
import numpy as np
import pytest

from recipe_jax.diagnose import data_checks

DUPLICATED_TRAIN = list(range(10, 15))  # copies of train rows 0..4
LEAKED_TEST = list(range(8))  # copies of train rows 20..27 plus small noise
CONSTANT_FEATURE = 3
NAN_TEST_ROW = 50


def clean_splits(seed=0):
  rng = np.random.default_rng(seed)
  make = lambda n: (rng.normal(size=(n, 20)).astype(np.float32), rng.integers(0, 5, n))
  return {'train': make(300), 'val': make(50), 'test': make(100)}


def planted_splits():
  splits = clean_splits()
  (x_train, y_train), (x_test, y_test) = splits['train'], splits['test']
  x_train[DUPLICATED_TRAIN], y_train[DUPLICATED_TRAIN] = x_train[:5], y_train[:5]
  noise = np.random.default_rng(1).normal(scale=0.01, size=(len(LEAKED_TEST), 20))
  x_test[LEAKED_TEST] = x_train[20:28] + noise
  for x, _ in splits.values():
    x[:, CONSTANT_FEATURE] = 1.0
  x_test[NAN_TEST_ROW, 0] = np.nan
  return splits


def by_check(verdicts):
  return {v.check: v for v in verdicts}


def test_clean_data_gives_no_fail():
  splits = clean_splits()
  verdicts = (data_checks.basic_statistics(splits) + data_checks.exact_duplicates(splits) +
              data_checks.near_duplicate_leakage(splits, rms_threshold=0.1) +
              [data_checks.class_balance(splits, 5, max_imbalance=3.0)])
  assert [v.check for v in verdicts if v.status == 'FAIL'] == []


def test_planted_exact_duplicates_in_train_are_all_found():
  v = by_check(data_checks.exact_duplicates(planted_splits()))['duplicates_within_splits']
  assert v.status == 'WARN' and v.evidence['redundant'] == {'train': 5}
  assert sorted(tuple(g) for g in v.evidence['groups']['train']) == [
      (i, i + 10) for i in range(5)]


def test_identical_inputs_with_different_labels_fail():
  splits = planted_splits()
  splits['train'][1][12] = (splits['train'][1][2] + 1) % 5  # the copy of row 2 gets another label
  v = by_check(data_checks.exact_duplicates(splits))['conflicting_labels']
  assert v.status == 'FAIL' and v.evidence['groups'] == [[['train', 2, int(splits['train'][1][2])],
                                                          ['train', 12, int(splits['train'][1][12])]]]


def test_test_example_copied_exactly_into_train_fails_as_leakage():
  splits = clean_splits()
  splits['test'][0][7] = splits['train'][0][42]
  v = by_check(data_checks.exact_duplicates(splits))['duplicates_across_splits']
  assert v.status == 'FAIL' and v.evidence['groups'] == [[['train', 42], ['test', 7]]]


def test_perturbed_test_copies_of_train_are_all_found_and_nothing_else():
  v = by_check(data_checks.near_duplicate_leakage(planted_splits(), rms_threshold=0.1))
  leak = v['near_duplicates_test_train']
  assert leak.status == 'FAIL'
  assert sorted(leak.evidence['leaked_test_indices']) == LEAKED_TEST  # recall 1.0, precision 1.0
  found = dict(zip(leak.evidence['leaked_test_indices'], leak.evidence['nearest_indices']))
  assert found == {i: 20 + i for i in LEAKED_TEST}
  assert v['near_duplicates_val_train'].status == 'PASS'


def test_blockwise_nearest_neighbour_matches_brute_force():
  rng = np.random.default_rng(3)
  train, queries = rng.normal(size=(333, 7)), rng.normal(size=(45, 7))
  distance, index = data_checks.nearest_train_neighbour(train, queries, block=50)
  mean, std = train.mean(0), train.std(0)
  scaled = lambda a: (a - mean) / std
  brute = ((scaled(queries)[:, None] - scaled(train)[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(index, brute.argmin(1))
  np.testing.assert_allclose(distance, np.sqrt(brute.min(1) / 7), rtol=1e-4, atol=1e-5)


def test_nan_and_constant_feature_are_reported():
  v = by_check(data_checks.basic_statistics(planted_splits()))
  assert v['non_finite_values'].status == 'FAIL'
  assert v['non_finite_values'].evidence['rows_with_non_finite'] == {'test': [NAN_TEST_ROW]}
  assert v['constant_features'].status == 'WARN'
  assert v['constant_features'].evidence['constant_feature_indices'] == [CONSTANT_FEATURE]


@pytest.mark.parametrize('train_labels, status', [([0] * 90 + [1] * 10, 'WARN'),
                                                  ([0] * 50 + [1] * 50, 'PASS')])
def test_class_imbalance_warns_above_the_configured_ratio(train_labels, status):
  x = np.zeros((100, 2))
  splits = {'train': (x, np.array(train_labels)), 'test': (x[:2], np.array([0, 1]))}
  assert data_checks.class_balance(splits, 2, max_imbalance=3.0).status == status


def test_class_in_test_but_never_in_train_fails():
  x = np.zeros((10, 2))
  splits = {'train': (x, np.zeros(10, int)), 'test': (x[:3], np.array([0, 1, 1]))}
  v = data_checks.class_balance(splits, 2, max_imbalance=3.0)
  assert v.status == 'FAIL' and v.evidence['test_classes_missing_in_train'] == [1]


def blobs(seed=0, per_class=100, classes=5, dim=20, separation=4.0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * separation
  y = np.repeat(np.arange(classes), per_class)
  return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


PLANTED_OUTLIERS = [7, 150, 333]
FLIPPED = list(range(0, 500, 25))  # 20 of 500 labels (4%)


def test_planted_outliers_rank_first_and_clean_data_passes():
  x, y = blobs()
  assert data_checks.outliers(x, y, 5, z_threshold=5.0).status == 'PASS'
  for i in PLANTED_OUTLIERS:
    centre = x[y == y[i]].mean(0)
    x[i] = centre + 8 * (x[i] - centre)
  v = data_checks.outliers(x, y, 5, z_threshold=5.0)
  assert v.status == 'WARN' and sorted(v.evidence['indices'][:3]) == PLANTED_OUTLIERS


def test_flipped_labels_are_found_by_cross_validated_confident_learning():
  x, y = blobs()
  clean = data_checks.label_noise(y, data_checks.cross_validated_probabilities(x, y, 5))
  assert clean.status == 'PASS'
  noisy = y.copy()
  noisy[FLIPPED] = (y[FLIPPED] + 1 + np.arange(len(FLIPPED)) % 4) % 5
  v = data_checks.label_noise(noisy, data_checks.cross_validated_probabilities(x, noisy, 5))
  found = set(v.evidence['indices'])
  recall, precision = len(found & set(FLIPPED)) / len(FLIPPED), len(found & set(FLIPPED)) / len(found)
  assert v.status == 'WARN' and recall >= 0.9 and precision >= 0.8, (recall, precision)
  suggested = dict(zip(v.evidence['indices'], v.evidence['suggested_labels']))
  assert all(suggested[i] == y[i] for i in found & set(FLIPPED))  # it suggests the true label


def test_label_noise_says_when_the_model_is_too_weak_to_judge():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 400)
  guesses = rng.dirichlet(np.ones(5), size=400)  # a model that knows nothing
  v = data_checks.label_noise(y, guesses)
  assert v.status == 'PASS' and 'too weak to judge single labels' in v.summary
  assert 'the errors of a hard task' in v.summary and v.evidence['model_accuracy'] < 0.5


def structured_labels(remapped_classes: int = 0, pair: tuple | None = None, seed: int = 0):
  """1400 rows of 10 classes and a model right on 96% of them; in the second half of the rows
  the first `remapped_classes` classes carry another encoder's ids (two sources merged), or
  45% of class pair[0] is labelled pair[1] (one systematic confusion)."""
  rng = np.random.default_rng(seed)
  n, classes = 1400, 10
  truth = rng.integers(0, classes, n)
  predicted = truth.copy()
  wrong = rng.random(n) < 0.04
  predicted[wrong] = rng.integers(0, classes, wrong.sum())
  given = truth.copy()
  other_encoder = np.array([9, 2, 7, 8, 4, 5, 6, 0, 1, 3])
  moved = np.isin(truth, np.arange(remapped_classes)) & (np.arange(n) >= n // 2)
  given[moved] = other_encoder[truth[moved]]
  if pair:
    confused = (truth == pair[0]) & (rng.random(n) < 0.45)
    given[confused] = pair[1]
  probabilities = np.full((n, classes), 0.1 / (classes - 1))
  probabilities[np.arange(n), predicted] = 0.9
  return given, probabilities


@pytest.mark.parametrize('remapped, status', [(10, 'FAIL'), (3, 'FAIL'), (2, 'FAIL'), (1, 'WARN')])
def test_a_block_of_rows_with_another_label_encoding_is_named_with_its_rows(remapped, status):
  """Two classes remapped in half the file is already a block (Cramér's V 0.32, threshold
  0.3); one class remapped reads as one class pair instead."""
  given, probabilities = structured_labels(remapped)
  v = data_checks.label_noise(given, probabilities)
  assert v.status == status, v.summary
  if status == 'FAIL':
    assert 'rows 700 to 1399' in v.summary or 'rows 0 to 699' in v.summary
    assert 'different label encodings merged' in v.summary
    assert v.cause == 'labels_by_rows'
  else:
    assert 'labelled 9 look like 0' in v.summary and 'labels mixed up' in v.summary


def test_one_systematic_confusion_names_the_class_pair():
  given, probabilities = structured_labels(pair=(7, 1))
  v = data_checks.label_noise(given, probabilities)
  assert v.status == 'WARN' and 'labelled 1 look like 7' in v.summary
  assert v.cause == 'systematic_confusion'
  assert v.evidence['structure']['dominant_pairs'][0]['given'] == 1


def test_two_classes_confused_both_ways_are_called_alike_not_mislabelled():
  """A dominant pair was always 'a systematic confusion (an annotator or a mapping)', also
  where the model mixes two genuinely alike classes up in both directions."""
  rng = np.random.default_rng(0)
  given = rng.integers(0, 10, 1400)
  predicted = given.copy()
  for a, b in ((3, 5), (5, 3)):
    swap = (given == a) & (rng.random(1400) < 0.3)
    predicted[swap] = b
  probabilities = np.full((1400, 10), 0.1 / 9)
  probabilities[np.arange(1400), predicted] = 0.9
  v = data_checks.label_noise(given, probabilities)
  assert v.status == 'WARN' and v.cause == 'classes_alike', v.summary
  assert 'confused both ways' in v.summary and 'annotator' not in v.summary
  one_way = data_checks.label_noise(*structured_labels(pair=(7, 1)))
  assert 'one way much more than the other' in one_way.summary


def test_random_noise_and_clean_labels_have_no_structure():
  given, probabilities = structured_labels()
  v = data_checks.label_noise(given, probabilities)  # the model's 4% random errors
  assert v.status == 'WARN' and 'random label noise' in v.summary
  assert v.evidence['structure']['block'] is None
  assert v.evidence['structure']['dominant_pairs'] == []


ROWS = {'train': np.arange(300) + 1000, 'val': np.arange(50) + 5000, 'test': np.arange(100)}


def test_every_data_verdict_says_where_with_the_rows_of_the_user_s_file():
  """Class, rows and features with counts, and what follows (rows: the splits' positions in
  the user's files; validation is carved from the train file)."""
  splits = planted_splits()
  splits['train'][1][12] = (splits['train'][1][2] + 1) % 5
  splits['test'][0][7] = splits['train'][0][42]
  v = by_check(data_checks.basic_statistics(splits, ROWS) +
               data_checks.exact_duplicates(splits, ROWS) +
               data_checks.near_duplicate_leakage(splits, 0.1, ROWS))
  assert f'test row {NAN_TEST_ROW}' in v['non_finite_values'].summary
  assert 'features 0' in v['non_finite_values'].summary
  assert f'{CONSTANT_FEATURE} = 1' in v['constant_features'].summary
  assert 'train rows 1000, 1010' in v['duplicates_within_splits'].summary
  assert 'train row 1042 = test row 7' in v['duplicates_across_splits'].summary
  assert 'train row 1002 (label' in v['conflicting_labels'].summary
  # the exact copy is the nearest of the 9 leaked test rows
  assert 'e.g. test row 7 at 0 from train row 1042' in v['near_duplicates_test_train'].summary


def test_class_imbalance_names_the_classes_and_what_follows():
  x = np.zeros((100, 2))
  splits = {'train': (x, np.array([0] * 85 + [1] * 10 + [2] * 5)), 'test': (x[:2], np.array([0, 1]))}
  v = data_checks.class_balance(splits, 3, max_imbalance=3.0)
  assert v.status == 'WARN'
  assert 'class 0: 85 examples, class 2: 5' in v.summary
  assert 'never predicts class 2 loses only 5.0% accuracy' in v.summary


def test_outliers_name_rows_classes_and_their_z():
  x, y = blobs()
  x[7] += 40.0
  v = data_checks.outliers(x, y, 5, 5.0, {'train': np.arange(len(y)) + 300})
  assert v.status == 'WARN' and f'train row 307 (class {y[7]}, z' in v.summary
