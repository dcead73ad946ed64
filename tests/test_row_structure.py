"""Structure along a file's rows: a block of rows whose inputs differ is named by its rows and
by how they differ; a slow trend is called a trend; a file sorted by class, a shuffled one and
a block of relabelled rows (the labels', not the inputs') stay quiet."""
import re

import numpy as np
import pytest

from recipe_jax.diagnose import row_structure

N, FEATURES, CLASSES = 2000, 20, 5
BLOCK = slice(600, 800)


def blobs(seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, CLASSES, N)
  centres = rng.normal(scale=2.0, size=(CLASSES, FEATURES))
  return (centres[y] + rng.normal(size=(N, FEATURES))).astype(np.float32), y


def blocks(x, y, **kwargs):
  return row_structure.input_blocks(x, y, np.arange(len(y)), CLASSES, 'train', **kwargs)


def test_a_shuffled_file_and_one_sorted_by_class_stay_quiet():
  x, y = blobs()
  assert blocks(x, y).status == 'PASS'
  order = np.argsort(y, kind='stable')
  v = blocks(x[order], y[order])
  assert v.status == 'PASS' and v.cause is None, v.summary


def test_a_block_of_rows_scaled_is_named_by_its_rows_and_its_spread():
  x, y = blobs()
  x[BLOCK] *= 3  # raw values scaled: their class centres move too, so wider than 3x
  v = blocks(x, y)
  assert v.status == 'WARN' and v.cause == 'input_block', v.summary
  assert 'rows 600 to 799 of the train file (10% of the rows, 200)' in v.summary
  assert re.search(r'their inputs spread [34](\.\d)?x as wide', v.summary), v.summary
  assert 'not a trend' in v.summary


def row_mean_spread(x, y):
  """The within-class spread of a row's mean over the standardised features."""
  z = (x - x.mean(0)) / x.std(0)
  means = z.mean(1)
  return float(np.sqrt(np.mean([means[y == c].var() for c in range(CLASSES)])))


@pytest.mark.parametrize('effect, status', [(0.6, 'PASS'), (1.6, 'WARN')])
def test_a_shifted_block_either_side_of_the_effect_threshold(effect, status):
  x, y = blobs()
  shift = effect * row_mean_spread(x, y) * x.std(0)  # moves the block's row means by `effect`
  x[BLOCK] += shift
  v = blocks(x, y, min_effect=1.0)
  assert v.status == status, v.summary
  if status == 'WARN':
    assert 'shifted up' in v.summary and 'rows 6' in v.summary


def test_a_slow_drift_along_the_rows_is_a_trend_not_a_block():
  x, y = blobs()
  x += (np.linspace(0, 1, N)[:, None] * 0.5 * x.std(0)).astype(np.float32)
  v = blocks(x, y)
  assert v.status == 'WARN' and v.cause == 'input_trend', v.summary
  assert 'drift gradually' in v.summary and 'no abrupt block' in v.summary


def test_a_block_of_relabelled_rows_is_the_labels_not_the_inputs():
  x, y = blobs()
  y = y.copy()
  y[BLOCK] = (y[BLOCK] + 1) % CLASSES  # another label encoding in these rows
  v = blocks(x, y)
  assert v.status == 'WARN' and v.cause == 'input_block'  # alone, it looks like inputs
  v = blocks(x, y, label_block={'first_row': 600, 'last_row': 799})
  assert v.status == 'PASS' and v.cause == 'labels_block' and 'label_noise' in v.summary


def test_rows_are_read_in_file_order():
  """The carved splits are out of file order; the check sorts by the rows it is given."""
  x, y = blobs()
  x[BLOCK] *= 3
  shuffle = np.random.default_rng(1).permutation(N)
  v = row_structure.input_blocks(x[shuffle], y[shuffle], np.arange(N)[shuffle], CLASSES, 'train')
  assert v.cause == 'input_block' and 'rows 600 to 799' in v.summary


def test_inputs_that_do_not_vary_within_their_classes_have_no_structure_to_find():
  y = np.repeat(np.arange(CLASSES), N // CLASSES)
  x = np.eye(CLASSES, FEATURES)[y].astype(np.float32)  # each class one fixed input
  v = blocks(x, y)
  assert v.status == 'PASS' and 'do not vary within their classes' in v.summary
