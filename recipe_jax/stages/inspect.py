"""stage='inspect': recipe step 1, look at the data before any net (no training)."""
import json
import os

import numpy as np

from recipe_jax import data as data_lib, data_checks, plots, report


def raw_splits(config):
  """train / val / test exactly as training would split them, before normalisation."""
  raw_config = config.dataset.copy_and_resolve_references()
  raw_config.normalize = False
  dataset = data_lib.load(raw_config)
  splits = {'train': (dataset.x_train, dataset.y_train), 'val': (dataset.x_val, dataset.y_val),
            'test': (dataset.x_test, dataset.y_test)}
  return dataset, {name: xy for name, xy in splits.items() if len(xy[1])}


def run(config, workdir: str) -> list:
  out = os.path.join(workdir, 'inspect')
  os.makedirs(out, exist_ok=True)
  dataset, splits = raw_splits(config)
  cfg = config.inspect
  balance = data_checks.class_balance(splits, dataset.num_classes, cfg.max_imbalance)
  leakage = data_checks.near_duplicate_leakage(splits, cfg.leakage_rms_threshold)
  x, y = splits['train']
  outliers = data_checks.outliers(x, y, dataset.num_classes, cfg.outlier_z)
  noise = _label_noise(x, y, dataset.num_classes, cfg)
  verdicts = [*data_checks.basic_statistics(splits), balance,
              *data_checks.exact_duplicates(splits), *leakage, outliers, noise]
  images = {balance.check: [_class_plot(out, balance)],
            'sizes_and_ranges': _sample_grids(out, splits['train'], dataset.num_classes,
                                              cfg.examples_per_class)}
  for v in leakage:
    if v.status == 'FAIL':
      images[v.check] = [_leak_pairs(out, v, splits)]
  if outliers.status == 'WARN':
    images['outliers'] = [_indexed_grid(out, 'outliers.png', x, outliers.evidence['indices'],
                                        [f'#{i} y={y[i]} z={z:.1f}' for i, z in zip(
                                            outliers.evidence['indices'], outliers.evidence['z'])])]
  if noise.status == 'WARN':
    e = noise.evidence
    images['label_noise'] = [_indexed_grid(out, 'label_noise.png', x, e['indices'], [
        f'#{i} given {g} -> {s}?' for i, g, s in zip(e['indices'], e['given_labels'],
                                                     e['suggested_labels'])])]
  with open(os.path.join(out, 'input_stats.json'), 'w') as f:
    json.dump({'mean': np.ravel(dataset.mean).tolist(), 'std': np.ravel(dataset.std).tolist(),
               'computed_on': 'train split, before normalisation'}, f, indent=2)
  report.write(out, f'Inspect: {config.dataset.name}', verdicts, images)
  return verdicts


def _label_noise(x, y, num_classes, cfg):
  """Confident learning on cross-validated probabilities, on a fixed random subset if large."""
  subset = np.arange(len(y))
  if len(y) > cfg.cv_max_examples:
    subset = np.sort(np.random.default_rng(0).choice(len(y), cfg.cv_max_examples, replace=False))
  probabilities = data_checks.cross_validated_probabilities(
      x[subset], y[subset], num_classes, folds=cfg.cv_folds, steps=cfg.cv_steps)
  verdict = data_checks.label_noise(y[subset], probabilities, cfg.cv_min_accuracy)
  verdict.evidence['indices'] = subset[verdict.evidence['indices']].tolist()  # back to train ids
  verdict.evidence['examples_checked'] = int(len(subset))
  return verdict


def _indexed_grid(out, name, x, indices, titles, limit=24):
  path = os.path.join(out, name)
  plots.grid(path, [x[i] for i in indices[:limit]], titles[:limit], columns=6)
  return path


def _class_plot(out, balance):
  path = os.path.join(out, 'class_counts.png')
  plots.class_counts(path, balance.evidence['counts'])
  return path


def _sample_grids(out, train, num_classes, per_class):
  x, y = train
  rng = np.random.default_rng(0)
  examples, titles, means = [], [], []
  for c in range(num_classes):
    members = np.flatnonzero(y == c)
    shown = rng.choice(members, min(per_class, len(members)), replace=False)
    examples += [x[i] for i in shown] + [None] * (per_class - len(shown))
    titles += [f'#{i} y={c}' for i in shown] + [''] * (per_class - len(shown))
    if len(members):
      means.append((np.nanmean(x[members], axis=0), f'class {c} mean'))
  samples = os.path.join(out, 'samples_per_class.png')
  plots.grid(samples, examples, titles, per_class)
  class_means = os.path.join(out, 'class_means.png')
  plots.grid(class_means, [m for m, _ in means], [t for _, t in means], min(5, len(means)))
  return [samples, class_means]


def _leak_pairs(out, verdict, splits):
  split = 'val' if 'val' in verdict.check else 'test'
  query_idx = verdict.evidence[f'leaked_{split}_indices'][:12]
  train_idx = verdict.evidence['nearest_train_indices'][:12]
  examples, titles = [], []
  for q, t in zip(query_idx, train_idx):
    examples += [splits[split][0][q], splits['train'][0][t]]
    titles += [f'{split} #{q} y={splits[split][1][q]}', f'train #{t} y={splits["train"][1][t]}']
  path = os.path.join(out, f'leaked_{split}_pairs.png')
  plots.grid(path, examples, titles, columns=4)
  return path
