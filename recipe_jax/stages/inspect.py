"""stage='inspect': recipe step 1, look at the data before any net (no training)."""
import os
import time

import numpy as np
from absl import logging

from recipe_jax import console, files
from recipe_jax.data import datasets as data_lib
from recipe_jax.diagnose import data_checks, row_structure, shift_checks
from recipe_jax.engine import loop
from recipe_jax.report import plots, results as report
from recipe_jax.verdicts import StageResult

CHECK_GROUPS = 8  # `checked` calls in run()

LOOKED_AT = ['inspect/report.md', 'inspect/verdicts.json', 'inspect/input_stats.json']


def raw_splits(config):
  """train / val / test exactly as training would split them, before normalisation."""
  raw_config = config.dataset.copy_and_resolve_references()
  raw_config.normalize = False
  dataset = data_lib.load(raw_config, require_finite=False)  # basic_statistics reports them
  splits = {'train': (dataset.x_train, dataset.y_train), 'val': (dataset.x_val, dataset.y_val),
            'test': (dataset.x_test, dataset.y_test)}
  return dataset, {name: xy for name, xy in splits.items() if len(xy[1])}


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'inspect')
  files.makedirs(out)
  dataset, splits = raw_splits(config)
  cfg = config.inspect
  title = f'Inspect: {config.dataset.name}'
  x, y = splits['train']
  verdicts = []  # grows check by check: a Ctrl-C saves those done
  start, names = time.time(), []

  def checked(name, found):  # a line per group: the later ones fit models for a while
    names.append(name)
    logging.info('inspect: %d/%d %s checked (%s)', len(names), CHECK_GROUPS, name,
                 console.format_seconds(time.time() - start))
    return found
  rows = {name: getattr(dataset, f'{name}_rows') for name in splits}  # in the user's files
  try:
    verdicts += checked('sizes and ranges', data_checks.basic_statistics(splits, rows))
    balance = checked('class balance', data_checks.class_balance(splits, dataset.num_classes,
                                                                 cfg.max_imbalance))
    verdicts.append(balance)
    verdicts += checked('exact duplicates', data_checks.exact_duplicates(splits, rows))
    leakage = checked('near duplicates', data_checks.near_duplicate_leakage(
        splits, cfg.leakage_rms_threshold, rows))
    verdicts += leakage
    outliers = checked('outliers', data_checks.outliers(x, y, dataset.num_classes, cfg.outlier_z,
                                                        rows))
    verdicts.append(outliers)
    noise = checked('label noise', _label_noise(x, y, dataset.num_classes, cfg,
                                                dataset.train_rows))
    verdicts.append(noise)
    shifted, shift_images = checked('shift between splits', _shift_checks(out, splits, dataset,
                                                                          cfg))
    verdicts += shifted
    verdicts += checked('structure along the rows', _row_structure(
        splits, dataset, cfg, noise.evidence['structure']['block']))
  except KeyboardInterrupt:
    loop.interrupted()
    for v in verdicts:
      name_source_rows(v, dataset)
    return report.finish(workdir, StageResult('inspect', verdicts, {}, LOOKED_AT[:2],
                                              finished=False), title)
  images = {balance.check: [_class_plot(out, balance)],
            'sizes_and_ranges': _sample_grids(out, dataset, splits['train'], dataset.num_classes,
                                              cfg.examples_per_class)}
  for v in leakage:
    if v.status == 'FAIL':
      images[v.check] = [_leak_pairs(out, v, splits, dataset)]
  if outliers.status == 'WARN':
    images['outliers'] = [_indexed_grid(out, 'outliers.png', x, outliers.evidence['indices'],
                                        [f'row {dataset.train_rows[i]} y={y[i]} z={z:.1f}'
                                         for i, z in zip(outliers.evidence['indices'],
                                                         outliers.evidence['z'])])]
  if noise.status != 'PASS' and noise.evidence['indices']:
    e = noise.evidence
    images['label_noise'] = [_indexed_grid(out, 'label_noise.png', x, e['indices'], [
        f'row {dataset.train_rows[i]} given {g} -> {s}?' for i, g, s in zip(
            e['indices'], e['given_labels'], e['suggested_labels'])])]
  images.update(shift_images)
  for v in verdicts:
    name_source_rows(v, dataset)
  files.write_json(os.path.join(out, 'input_stats.json'),
                   {'mean': np.ravel(dataset.mean).tolist(), 'std': np.ravel(dataset.std).tolist(),
                    'computed_on': 'train split, before normalisation'})
  metrics = {f'{name}_examples': len(xy[1]) for name, xy in splits.items()}
  return report.finish(workdir, StageResult('inspect', verdicts, metrics, LOOKED_AT), title,
                       images)


def _shift_checks(out: str, splits: dict, dataset, cfg) -> tuple:
  """(verdicts, images): train against test and validation (drift of features and labels, a
  domain classifier), a model trained on train tested on test, and shortcut features."""
  x, y = splits['train']
  found, images = [], {}
  cap = cfg.shift_max_examples
  for other in ('test', 'val'):
    if other not in splits:
      continue
    xo, yo = splits[other]
    names = ('train', other)
    drift = shift_checks.feature_drift(x, xo, names, cap, cfg.drift_alpha, cfg.drift_min_ks)
    domain = shift_checks.domain_classifier(x, xo, names, cap, cfg.cv_folds, cfg.cv_steps,
                                            cfg.domain_warn_auc, cfg.domain_fail_auc,
                                            {other: getattr(dataset, f'{other}_rows')})
    labels = shift_checks.label_drift(y, yo, dataset.num_classes, names,
                                      cfg.label_drift_warn_v, cfg.label_drift_fail_v)
    found += [drift, domain, labels]
    if drift.status != 'PASS':
      images[drift.check] = [plots.feature_map(
          os.path.join(out, f'drift_{other}.png'), drift.evidence['ks_by_feature'],
          x.shape[1:], f'KS statistic, train vs {other}, per input feature',
          histograms={'train': x, other: xo}, features=drift.evidence['drifted_features'][:3])]
    if domain.status != 'PASS':
      rows = domain.evidence[f'{other}_indices_least_like_train']
      images[domain.check] = [_indexed_grid(out, f'least_like_train_{other}.png', xo, rows, [
          f'{other} row {getattr(dataset, f"{other}_rows")[i]} y={yo[i]}' for i in rows])]
    if labels.status != 'PASS':
      images[labels.check] = [_class_plot(out, labels, f'class_proportions_{other}.png',
                                          'proportions')]
  if 'test' in splits:
    found.append(shift_checks.train_to_test(x, y, *splits['test'], dataset.num_classes,
                                            ('train', 'test'), cap, cfg.cv_steps,
                                            cfg.train_to_test_z))
  shortcut = shift_checks.shortcut_features(x, y, dataset.num_classes, cap, cfg.cv_folds,
                                            cfg.shortcut_score)
  found.append(shortcut)
  if shortcut.status != 'PASS':
    images[shortcut.check] = [plots.feature_map(
        os.path.join(out, 'shortcut_features.png'), shortcut.evidence['score_by_feature'],
        x.shape[1:], 'label predicted by each feature alone (0: majority class, 1: perfect)',
        threshold=cfg.shortcut_score)]
  return found, images


def _row_structure(splits: dict, dataset, cfg, label_block) -> list:
  """A block of rows, or a trend, inside each file: the train file (train and validation,
  carved from it, back in file order) and the test file."""
  in_files = {'train': [s for s in ('train', 'val') if s in splits]}
  if 'test' in splits:
    in_files['test'] = ['test']
  found = []
  for name, parts in in_files.items():
    x = np.concatenate([splits[p][0] for p in parts])
    y = np.concatenate([splits[p][1] for p in parts])
    rows = np.concatenate([getattr(dataset, f'{p}_rows') for p in parts])
    found.append(row_structure.input_blocks(
        x, y, rows, dataset.num_classes, name, cfg.block_min_effect, cfg.trend_min_r2,
        label_block=label_block if name == 'train' else None))
  return found


def name_source_rows(verdict, dataset) -> None:
  """Rewrites the verdict's example indices (positions in the carved train / val / test
  splits) as rows of the source splits the user has (`data.source_rows`), in place."""
  e = verdict.evidence

  def as_ref(split, i):  # one example: {'split', 'source_split', 'source_row'[, 'tfds_id']}
    found = data_lib.source_rows(dataset, split, [i])
    ref = {'split': split, 'source_split': found['source_split'],
           'source_row': found['source_rows'][0]}
    if 'tfds_ids' in found:
      ref['tfds_id'] = found['tfds_ids'][0]
    return ref

  if verdict.check in ('outliers', 'label_noise'):
    e.update(data_lib.source_rows(dataset, 'train', e.pop('indices')))
  elif verdict.check.startswith('near_duplicates_'):
    split = 'val' if '_val_' in verdict.check else 'test'
    leaked = data_lib.source_rows(dataset, split, e.pop(f'leaked_{split}_indices'))
    e['leaked'] = {'split': split, **leaked}
    e['nearest'] = [as_ref(s, i) for s, i in zip(e.pop('nearest_splits'),
                                                 e.pop('nearest_indices'))]
  elif verdict.check == 'non_finite_values' and 'rows_with_non_finite' in e:
    e['rows_with_non_finite'] = {split: {'split': split, **data_lib.source_rows(
        dataset, split, rows)} for split, rows in e['rows_with_non_finite'].items()}
  elif verdict.check.startswith('domain_classifier_'):
    split = verdict.check[len('domain_classifier_'):]
    e['least_like_train'] = data_lib.source_rows(
        dataset, split, e.pop(f'{split}_indices_least_like_train'))
  elif verdict.check == 'duplicates_within_splits':
    e['groups'] = {split: [[as_ref(split, i) for i in group] for group in groups]
                   for split, groups in e['groups'].items()}
  elif verdict.check == 'duplicates_across_splits':
    e['groups'] = [[as_ref(split, i) for split, i in group] for group in e['groups']]
  elif verdict.check == 'conflicting_labels':
    e['groups'] = [[{**as_ref(split, i), 'label': label} for split, i, label in group]
                   for group in e['groups']]


def _label_noise(x, y, num_classes, cfg, rows):
  """Confident learning on cross-validated probabilities, on a fixed random subset if large;
  `rows`: each training example's row in the source file, for blocks of rows."""
  subset = np.arange(len(y))
  if len(y) > cfg.cv_max_examples:
    subset = np.sort(np.random.default_rng(0).choice(len(y), cfg.cv_max_examples, replace=False))
  probabilities = data_checks.cross_validated_probabilities(
      x[subset], y[subset], num_classes, folds=cfg.cv_folds, steps=cfg.cv_steps)
  verdict = data_checks.label_noise(y[subset], probabilities, cfg.cv_min_accuracy,
                                    np.asarray(rows)[subset])
  verdict.evidence['indices'] = subset[verdict.evidence['indices']].tolist()  # back to train ids
  verdict.evidence['examples_checked'] = int(len(subset))
  return verdict


def _indexed_grid(out, name, x, indices, titles, limit=24):
  path = os.path.join(out, name)
  plots.grid(path, [x[i] for i in indices[:limit]], titles[:limit], columns=6)
  return path


def _class_plot(out, verdict, name='class_counts.png', key='counts'):
  path = os.path.join(out, name)
  plots.class_counts(path, verdict.evidence[key], 'fraction of the split' if key == 'proportions'
                     else 'examples')
  return path


def _sample_grids(out, dataset, train, num_classes, per_class):
  x, y = train
  rng = np.random.default_rng(0)
  examples, titles, means = [], [], []
  for c in range(num_classes):
    members = np.flatnonzero(y == c)
    shown = rng.choice(members, min(per_class, len(members)), replace=False)
    examples += [x[i] for i in shown] + [None] * (per_class - len(shown))
    titles += [f'row {dataset.train_rows[i]} y={c}' for i in shown] + [''] * (per_class - len(shown))
    if len(members):
      means.append((np.nanmean(x[members], axis=0), f'class {c} mean'))
  samples = os.path.join(out, 'samples_per_class.png')
  plots.grid(samples, examples, titles, per_class)
  class_means = os.path.join(out, 'class_means.png')
  plots.grid(class_means, [m for m, _ in means], [t for _, t in means], min(5, len(means)))
  return [samples, class_means]


def _leak_pairs(out, verdict, splits, dataset):
  split = 'val' if 'val' in verdict.check else 'test'
  e = verdict.evidence
  rows = lambda name, i: f"{data_lib.SOURCE_SPLIT[name]} row {getattr(dataset, f'{name}_rows')[i]}"
  examples, titles = [], []
  for q, s, t in list(zip(e[f'leaked_{split}_indices'], e['nearest_splits'],
                          e['nearest_indices']))[:12]:
    examples += [splits[split][0][q], splits[s][0][t]]
    titles += [f'{split}: {rows(split, q)} y={splits[split][1][q]}',
               f'{s}: {rows(s, t)} y={splits[s][1][t]}']
  path = os.path.join(out, f'leaked_{split}_pairs.png')
  plots.grid(path, examples, titles, columns=4)
  return path
