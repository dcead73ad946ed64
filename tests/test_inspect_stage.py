"""The inspect stage end to end on a planted .npz: verdicts, pictures and report on disk."""
import json
import os
import re

import numpy as np

from recipe_jax.config import defaults
from recipe_jax.data import datasets as data
from recipe_jax.stages import inspect as inspect_stage


def test_inspect_stage_reports_planted_leakage_with_pictures(tmp_path, caplog):
  rng = np.random.default_rng(0)
  x_train = rng.normal(size=(200, 8, 8, 1)).astype(np.float32)
  y_train = np.repeat(np.arange(4), 50)
  x_test = rng.normal(size=(40, 8, 8, 1)).astype(np.float32)
  x_test[:5] = x_train[100:105] + 0.01 * rng.normal(size=(5, 8, 8, 1))
  np.savez(tmp_path / 'planted.npz', x_train=x_train, y_train=y_train, x_test=x_test,
           y_test=np.repeat(np.arange(4), 10))
  config = defaults.get_config()
  config.stage = 'inspect'
  config.dataset.name = f'npz:{tmp_path / "planted.npz"}'
  config.dataset.val_fraction = 0.0

  with caplog.at_level('INFO'):
    verdicts = {v.check: v for v in inspect_stage.run(config, str(tmp_path)).verdicts}
  progress = re.findall(r'inspect: (\d)/(\d) ([a-z ]+) checked', caplog.text)  # never silent
  assert [(int(a), int(b)) for a, b, _ in progress] == [(i, 8) for i in range(1, 9)]
  assert progress[-1][2] == 'structure along the rows'
  # the train file is sorted by class (50 rows a class): no block of rows, no trend
  assert verdicts['input_blocks_train'].status == 'PASS', verdicts['input_blocks_train'].summary

  out = tmp_path / 'inspect'
  leak = verdicts['near_duplicates_test_train']
  assert leak.status == 'FAIL' and sorted(leak.evidence['leaked']['source_rows']) == [0, 1, 2, 3, 4]
  with open(out / 'verdicts.json') as f:
    saved = {v['check']: v for v in json.load(f)}
  with open(out / 'result.json') as f:
    assert json.load(f)['counts']['FAIL'] >= 1
  assert saved['near_duplicates_test_train']['evidence']['nearest'] == leak.evidence['nearest']
  # Pure noise inputs: no model can predict labels, so label_noise may flag; the rest is clean.
  clean = {c: v.status for c, v in verdicts.items()
           if c not in ('near_duplicates_test_train', 'label_noise')}
  assert set(clean.values()) == {'PASS'}, clean
  report = (out / 'report.md').read_text()
  for png in ('class_counts.png', 'samples_per_class.png', 'class_means.png',
              'leaked_test_pairs.png'):
    assert os.path.getsize(out / png) > 1000 and f']({png})' in report
  stats = json.loads((out / 'input_stats.json').read_text())
  assert abs(stats["mean"][0] - float(x_train.mean())) < 1e-3  # one channel: a single mean


def test_training_data_can_take_its_normalisation_from_an_inspect_run(tmp_path, data_dir):
  from recipe_jax.data import datasets as data
  config = defaults.get_config()
  config.stage = 'inspect'
  config.dataset.name = 'digits'
  config.dataset.data_dir = data_dir
  inspect_stage.run(config, str(tmp_path))
  recomputed = data.load(config.dataset)
  config.dataset.stats_from = str(tmp_path)  # the inspect run's workdir
  from_inspect = data.load(config.dataset)
  np.testing.assert_allclose(from_inspect.x_train, recomputed.x_train, atol=1e-5)
  stats = json.loads((tmp_path / 'inspect' / 'input_stats.json').read_text())
  stats['mean'] = [100.0]  # a different mean must show in the normalised data
  (tmp_path / 'shifted.json').write_text(json.dumps(stats))
  config.dataset.stats_from = str(tmp_path / 'shifted.json')
  shifted = data.load(config.dataset)
  assert float(shifted.x_train.mean()) < float(recomputed.x_train.mean()) - 10


def test_inspect_stage_finds_every_defect_planted_in_an_npz(tmp_path):
  """Every index in verdicts.json is a row of the .npz file, though validation is carved out of
  x_train (so positions inside the carved splits differ from the file's rows)."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 20)) * 4
  y_train, y_test = np.repeat(np.arange(5), 100), np.repeat(np.arange(5), 20)
  x_train = (centres[y_train] + rng.normal(size=(500, 20))).astype(np.float32)
  x_test = (centres[y_test] + rng.normal(size=(100, 20))).astype(np.float32)
  duplicated = [110, 230, 340]  # copies of train rows 10, 20, 30 (same labels)
  x_train[duplicated], y_train[duplicated] = x_train[[10, 20, 30]], y_train[[10, 20, 30]]
  leaked = list(range(6))  # test rows 0..5: train rows 50..55 plus small noise
  x_test[leaked] = x_train[50:56] + 0.01 * rng.normal(size=(6, 20))
  flipped = list(range(3, 500, 25))  # 20 labels
  y_train[flipped] = (y_train[flipped] + 2) % 5
  x_train[:, 7] = x_test[:, 7] = 0.5  # a constant feature
  x_test[60, 2] = np.nan
  x_train[77, 4] = np.inf  # lands in train or validation: either way, file row 77
  np.savez(tmp_path / 'planted.npz', x_train=x_train, y_train=y_train, x_test=x_test,
           y_test=y_test)
  config = defaults.get_config()
  config.stage = 'inspect'
  config.dataset.name = f'npz:{tmp_path / "planted.npz"}'
  config.dataset.val_fraction = 0.2

  inspect_stage.run(config, str(tmp_path))
  with open(tmp_path / 'inspect' / 'verdicts.json') as f:
    v = {verdict['check']: verdict['evidence'] for verdict in json.load(f)}

  within = [[m['source_row'] for m in group] for groups in v['duplicates_within_splits'][
      'groups'].values() for group in groups]
  across = [sorted(m['source_row'] for m in group) for group in v['duplicates_across_splits'][
      'groups']]  # a copy and its original may fall into train and validation
  assert sorted(sorted(g) for g in within + across) == [[10, 110], [20, 230], [30, 340]]
  for group in within + across:
    np.testing.assert_array_equal(x_train[group[0]], x_train[group[1]])
  test_leak = v['near_duplicates_test_train']
  assert test_leak['leaked']['source_split'] == 'test'
  assert sorted(test_leak['leaked']['source_rows']) == leaked
  pairs = dict(zip(test_leak['leaked']['source_rows'],
                   [m['source_row'] for m in test_leak['nearest']]))
  assert pairs == {t: 50 + t for t in leaked}  # the file rows they were copied from
  assert {m['split'] for m in test_leak['nearest']} == {'train', 'val'}  # wherever they fell
  assert v['label_noise']['source_split'] == 'train'
  found = set(v['label_noise']['source_rows'])
  # Label noise is judged on the training split; flipped rows carved into validation are not.
  in_train = set(flipped) - set(data.validation_split(500, 0.2)[1].tolist())
  recall = len(found & in_train) / len(in_train)
  assert recall >= 0.9, recall  # asserted recall: 90%
  assert v['constant_features']['constant_feature_indices'] == [7]
  non_finite = v['non_finite_values']['rows_with_non_finite']
  assert non_finite['test']['source_rows'] == [60]
  assert [r for s in ('train', 'val') if s in non_finite for r in non_finite[s]['source_rows']] \
      == [77]
  assert os.path.getsize(tmp_path / 'inspect' / 'label_noise.png') > 1000


def test_near_duplicates_survive_nearly_constant_features():
  """Regression: per-feature standardisation divided the noise in nearly constant features
  (digits' corner pixels, a black border) by a tiny std, so noisy copies were not 'near'."""
  from recipe_jax.diagnose import data_checks
  config = defaults.get_config()
  config.dataset.name, config.dataset.normalize = 'digits', False
  config.dataset.val_fraction = 0.0
  digits = data.load(config.dataset)
  rng = np.random.default_rng(0)
  # A black border two pixels wide, almost constant in train (rare faint specks).
  x_train = np.pad(digits.x_train, ((0, 0), (2, 2), (2, 2), (0, 0)))
  x_train[::50, 0, 0] = 0.05
  x_test = np.pad(digits.x_test, ((0, 0), (2, 2), (2, 2), (0, 0)))
  copies = x_train[:40] + rng.normal(0, 0.15, x_train[:40].shape)  # re-encoded: noise everywhere
  splits = {'train': (x_train, digits.y_train),
            'test': (np.concatenate([copies, x_test]), np.concatenate([digits.y_train[:40],
                                                                       digits.y_test]))}
  [verdict] = data_checks.near_duplicate_leakage(splits, 0.1)
  assert verdict.status == 'FAIL'
  assert sorted(verdict.evidence['leaked_test_indices']) == list(range(40))  # no real digit
  assert verdict.evidence['nearest_indices'] == verdict.evidence['leaked_test_indices']
