"""Recipe step 1, part 2: does what you test on look like what you train on, and can one
feature (or a small patch or window of them) give the label away?

Plain functions over numpy arrays, each returning a Verdict; the inspect stage runs them on
train vs test and train vs validation. Large splits are subsampled to `max_examples` rows
(a fixed random subset), so the checks stay seconds long on CIFAR-sized data.
"""
import numpy as np
from scipy import stats

from recipe_jax.diagnose import data_checks, noise
from recipe_jax.verdicts import Verdict

MAX_LISTED = 20
MAX_MODEL_FEATURES = 256  # the small MLPs see at most this many: a fixed random projection


def _model_inputs(*arrays) -> list:
  """Inputs for the small MLPs: flattened, and above MAX_MODEL_FEATURES features projected by a
  fixed random Gaussian matrix (which keeps distances between examples roughly, so shifts and
  classes stay separable; a 32x32x3 image costs the MLP 12x less)."""
  flat = [_flat(a) for a in arrays]
  features = flat[0].shape[1]
  if features <= MAX_MODEL_FEATURES:
    return flat
  mean, std = flat[0].mean(0), flat[0].std(0) + 1e-6
  projection = np.random.default_rng(0).normal(size=(features, MAX_MODEL_FEATURES)) / np.sqrt(
      features)
  return [((f - mean) / std) @ projection for f in flat]


def subsample(n: int, max_examples: int, seed: int = 0) -> np.ndarray:
  """Sorted row indices: all of them, or a fixed random `max_examples` of them."""
  if n <= max_examples:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))


def _flat(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return np.nan_to_num(x.reshape(len(x), -1))


def feature_position(index: int, example_shape) -> list:
  """A flat feature index as its position in one example: [row, column, channel] of an image."""
  return [int(i) for i in np.unravel_index(index, tuple(example_shape))]


def ks_per_feature(a: np.ndarray, b: np.ndarray) -> tuple:
  """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test of every feature (column)."""
  found = [stats.ks_2samp(a[:, f], b[:, f]) if np.ptp(np.concatenate([a[:, f], b[:, f]])) > 0
           else (0.0, 1.0) for f in range(a.shape[1])]
  return np.array([s for s, _ in found]), np.array([p for _, p in found])


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> np.ndarray:
  """Which of many tests are discoveries at false discovery rate `alpha`."""
  order = np.argsort(p_values)
  ranked = p_values[order] <= alpha * np.arange(1, len(p_values) + 1) / len(p_values)
  cut = np.flatnonzero(ranked).max() + 1 if ranked.any() else 0
  found = np.zeros(len(p_values), bool)
  found[order[:cut]] = True
  return found


def feature_drift(x_ref, x_other, names: tuple, max_examples: int, alpha: float = 0.01,
                  min_effect: float = 0.1, fail_fraction: float = 0.25) -> Verdict:
  """Per feature, a KS test between the splits; a feature drifts when the Benjamini-Hochberg
  corrected test rejects at `alpha` and the KS statistic is at least `min_effect` (with
  thousands of examples a negligible shift is significant). WARN when any feature drifts,
  FAIL when more than `fail_fraction` of them do (the inputs are processed differently)."""
  ref, other = names
  a = _flat(x_ref)[subsample(len(x_ref), max_examples)]
  b = _flat(x_other)[subsample(len(x_other), max_examples, seed=1)]
  statistic, p = ks_per_feature(a, b)
  drifted = np.flatnonzero(benjamini_hochberg(p, alpha) & (statistic >= min_effect))
  ranked = drifted[np.argsort(-statistic[drifted])]
  shape = np.shape(x_ref)[1:]
  evidence = {
      'drifted_features': ranked[:MAX_LISTED].tolist(),
      'drifted_positions': [feature_position(i, shape) for i in ranked[:MAX_LISTED]],
      'ks_statistics': statistic[ranked[:MAX_LISTED]].round(3).tolist(),
      'count': int(len(drifted)), 'features': int(len(statistic)),
      'ks_by_feature': statistic.round(4).tolist(), 'alpha_fdr': alpha,
      'min_ks_statistic': min_effect, 'examples': [len(a), len(b)]}
  line = (f'{len(drifted)} of {len(statistic)} input features are distributed differently in '
          f'{other} than in {ref} (KS test, false discovery rate {alpha:g}, KS statistic >= '
          f'{min_effect:g})')
  if not len(drifted):
    return Verdict(f'feature_drift_{other}', 'PASS', line, evidence)
  top = ', '.join(f'{i} {tuple(feature_position(i, shape))} KS {statistic[i]:.2f}'
                  for i in ranked[:3])
  status = 'FAIL' if len(drifted) > fail_fraction * len(statistic) else 'WARN'
  why = ('most features moved: the two splits look processed differently (scaling, '
         'normalisation, another source)' if status == 'FAIL' else
         'look at these features in both splits')
  return Verdict(f'feature_drift_{other}', status, f'{line}; most drifted: {top}: {why}',
                 evidence)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve: the probability that a positive scores above a negative."""
  ranks = stats.rankdata(scores)
  n_pos, n_neg = positive.sum(), (~positive).sum()
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def domain_classifier(x_ref, x_other, names: tuple, max_examples: int, folds: int = 5,
                      steps: int = 300, warn_auc: float = 0.7, fail_auc: float = 0.9,
                      rows: dict | None = None) -> Verdict:
  """A cross-validated classifier (the small MLP of the label-noise check) told to tell the
  splits apart: an AUC near 0.5 means it cannot; WARN from `warn_auc`, FAIL from `fail_auc`.
  Balanced: at most as many rows of the larger split as the smaller has."""
  ref, other = names
  size = min(len(x_ref), len(x_other), max_examples // 2)
  rows_ref, rows_other = subsample(len(x_ref), size), subsample(len(x_other), size, seed=1)
  x = np.concatenate(_model_inputs(np.asarray(x_ref)[rows_ref], np.asarray(x_other)[rows_other]))
  is_other = np.concatenate([np.zeros(size, bool), np.ones(size, bool)])
  probabilities = data_checks.cross_validated_probabilities(
      x, is_other.astype(np.int32), 2, folds=folds, steps=steps)[:, 1]
  found = auc(probabilities, is_other)
  most_unlike = rows_other[np.argsort(-probabilities[size:])[:MAX_LISTED]]
  evidence = {'auc': found, 'examples_per_split': int(size), 'warn_auc': warn_auc,
              'fail_auc': fail_auc, f'{other}_indices_least_like_{ref}': most_unlike.tolist()}
  line = (f'a classifier tells {other} from {ref} with AUC {found:.2f} (0.5: it cannot; '
          f'cross-validated on {size} + {size} examples)')
  least = data_checks.where(other, most_unlike[:data_checks.NAMED], rows)  # the 3 least like
  if found >= fail_auc:
    return Verdict(f'domain_classifier_{other}', 'FAIL', f'{line}: the splits are easy to tell '
                   f'apart, so a model trained on one is tested on something else; least like '
                   f'{ref}: {least}', evidence)
  if found >= warn_auc:
    return Verdict(f'domain_classifier_{other}', 'WARN', f'{line}: the splits differ; least like '
                   f'{ref}: {least}; look at the drifted features and these examples', evidence)
  return Verdict(f'domain_classifier_{other}', 'PASS', line, evidence)


def label_drift(y_ref, y_other, num_classes: int, names: tuple, warn_v: float = 0.1,
                fail_v: float = 0.3, alpha: float = 1e-3) -> Verdict:
  """Class proportions of two splits: a chi-square test of homogeneity and its effect size,
  Cramér's V. WARN when significant (at `alpha`) with V >= `warn_v`, or when a class of one
  split is absent from the other; FAIL when V >= `fail_v`."""
  ref, other = names
  counts = np.stack([np.bincount(y_ref, minlength=num_classes),
                     np.bincount(y_other, minlength=num_classes)])
  seen = counts.sum(0) > 0
  table = counts[:, seen]
  chi2, p = (stats.chi2_contingency(table)[:2] if table.shape[1] > 1 else (0.0, 1.0))
  v = float(np.sqrt(chi2 / (table.sum() * max(1, min(table.shape) - 1))))
  missing = [c for c in range(num_classes) if counts[0, c] and not counts[1, c]]
  evidence = {'counts': {ref: counts[0].tolist(), other: counts[1].tolist()},
              'proportions': {ref: (counts[0] / counts[0].sum()).round(4).tolist(),
                              other: (counts[1] / max(1, counts[1].sum())).round(4).tolist()},
              'chi2': float(chi2), 'p_value': float(p), 'cramers_v': v,
              f'classes_missing_in_{other}': missing}
  line = (f"class proportions of {other} against {ref}: Cramér's V {v:.2f} (chi-square p "
          f'{p:.2g})')
  shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  moved = np.argsort(-np.abs(shares[1] - shares[0]))[:3]
  evidence['most_changed_classes'] = moved.tolist()
  changed = ', '.join(f'class {c}: {shares[0, c]:.1%} of {ref}, {shares[1, c]:.1%} of {other}'
                      for c in moved)
  if missing:
    line += f'; classes {missing} never occur in {other}'
  if v >= fail_v:
    return Verdict(f'label_drift_{other}', 'FAIL', f'{line}: the label distributions differ a '
                   f'lot ({changed}); {other} does not measure what {ref} trains for', evidence)
  if (p < alpha and v >= warn_v) or missing:
    return Verdict(f'label_drift_{other}', 'WARN', f'{line} ({changed}): accuracy on {other} '
                   f'weighs the classes differently from {ref}; compare per-class recall',
                   evidence)
  return Verdict(f'label_drift_{other}', 'PASS', line, evidence)


def feature_groups(example_shape) -> list:
  """Small groups of neighbouring features, as flat index arrays: 3x3 patches (every channel)
  of an image at stride 2, windows of 5 positions of a sequence at stride 2."""
  index = np.arange(int(np.prod(example_shape))).reshape(example_shape)
  if len(example_shape) >= 2:
    height, width = example_shape[:2]
    return [(f'patch rows {r}-{min(r + 3, height) - 1}, columns {c}-{min(c + 3, width) - 1}',
             index[r:r + 3, c:c + 3].ravel()) for r in range(0, max(1, height - 2), 2)
            for c in range(0, max(1, width - 2), 2)]
  length = example_shape[0]
  return [(f'positions {s}-{min(s + 5, length) - 1}', index[s:s + 5])
          for s in range(0, max(1, length - 4), 2)]


def _binned_single_feature_accuracy(x: np.ndarray, y: np.ndarray, num_classes: int,
                                    fold_of: np.ndarray, folds: int, bins: int = 16) -> np.ndarray:
  """Cross-validated accuracy of predicting the label from each feature alone: the majority
  class of the feature's quantile bin in the other folds (any mapping of value to label)."""
  edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1], axis=0)  # (bins - 1, features)
  binned = np.stack([np.searchsorted(edges[:, f], x[:, f]) for f in range(x.shape[1])], 1)
  correct = np.zeros(x.shape[1])
  features = np.arange(x.shape[1])
  for k in range(folds):
    held = fold_of == k
    counts = np.zeros((x.shape[1], bins, num_classes))
    np.add.at(counts, (np.broadcast_to(features, binned[~held].shape), binned[~held],
                       y[~held][:, None]), 1)
    predicted = counts[features, binned[held]].argmax(-1)  # (held rows, features)
    correct += (predicted == y[held][:, None]).sum(0)
  return correct / len(y)


def _nearest_mean_group_accuracy(x: np.ndarray, y: np.ndarray, num_classes: int, groups: list,
                                 fold_of: np.ndarray, folds: int) -> np.ndarray:
  """Cross-validated accuracy of a nearest class mean classifier on each group's features."""
  correct = np.zeros(len(groups))
  for k in range(folds):
    held = fold_of == k
    for g, (_, members) in enumerate(groups):
      train, test = x[~held][:, members], x[held][:, members]
      means = np.stack([train[y[~held] == c].mean(0) if np.any(y[~held] == c)
                        else np.full(len(members), np.inf) for c in range(num_classes)])
      distance = ((test[:, None, :] - means[None]) ** 2).sum(-1)
      correct[g] += (distance.argmin(-1) == y[held]).sum()
  return correct / len(y)


def shortcut_features(x, y, num_classes: int, max_examples: int, folds: int = 5,
                      threshold: float = 0.8) -> Verdict:
  """Features, or small patches / windows of them, that give the label away alone.

  Score: a feature's cross-validated accuracy alone, as a fraction of the way from always
  guessing the majority class (0) to perfect (1). An ordinary informative feature (a pixel of a
  digit) scores well below `threshold`; a feature that encodes the label scores near 1. WARN
  names the features and where they sit."""
  rows = subsample(len(y), max_examples)
  flat = data_checks._standardise(np.asarray(x)[rows])[0].astype(np.float64)
  labels = np.asarray(y)[rows]
  fold_of = np.random.default_rng(0).permutation(len(labels)) % folds
  majority = np.bincount(labels, minlength=num_classes).max() / len(labels)
  score = lambda accuracy: (accuracy - majority) / max(1 - majority, 1e-12)
  single = score(_binned_single_feature_accuracy(flat, labels, num_classes, fold_of, folds))
  groups = feature_groups(np.shape(x)[1:])
  grouped = score(_nearest_mean_group_accuracy(flat, labels, num_classes, groups, fold_of,
                                               folds))
  shape = np.shape(x)[1:]
  flagged_single = np.flatnonzero(single >= threshold)
  flagged_single = flagged_single[np.argsort(-single[flagged_single])]
  flagged_groups = np.flatnonzero(grouped >= threshold)
  flagged_groups = flagged_groups[np.argsort(-grouped[flagged_groups])]
  evidence = {
      'features': flagged_single[:MAX_LISTED].tolist(),
      'feature_positions': [feature_position(i, shape) for i in flagged_single[:MAX_LISTED]],
      'feature_scores': single[flagged_single[:MAX_LISTED]].round(3).tolist(),
      'groups': [groups[g][0] for g in flagged_groups[:MAX_LISTED]],
      'group_scores': grouped[flagged_groups[:MAX_LISTED]].round(3).tolist(),
      'best_feature': int(single.argmax()), 'best_feature_score': float(single.max()),
      'best_group': groups[int(grouped.argmax())][0], 'best_group_score': float(grouped.max()),
      'score_by_feature': single.round(3).tolist(), 'threshold': threshold,
      'majority_accuracy': float(majority), 'examples': int(len(labels))}
  if len(flagged_single) or len(flagged_groups):
    named = [f'feature {i} {tuple(feature_position(i, shape))} ({single[i]:.2f})'
             for i in flagged_single[:3]] + [f'{groups[g][0]} ({grouped[g]:.2f})'
                                             for g in flagged_groups[:3 - min(3, len(flagged_single))]]
    return Verdict('shortcut_features', 'WARN', f'{len(flagged_single)} features and '
                   f'{len(flagged_groups)} small groups predict the label alone (score >= '
                   f'{threshold:g} of the way from the majority class to perfect): '
                   f'{", ".join(named)}. A model will take this shortcut: is it something the '
                   'test data and the world will have too (a watermark, an ID, a leaked '
                   'label)?', evidence)
  return Verdict('shortcut_features', 'PASS', f'no feature or small group predicts the label '
                 f'alone (best feature {single.argmax()}: {single.max():.2f}, best group '
                 f'{groups[int(grouped.argmax())][0]}: {grouped.max():.2f}; a shortcut scores '
                 f'>= {threshold:g})', evidence)


def train_to_test(x_train, y_train, x_other, y_other, num_classes: int, names: tuple,
                  max_examples: int, steps: int = 300, z_max: float = 4.0) -> Verdict:
  """The small MLP of the label-noise check, trained on one half of (a subset of) train,
  predicts the other half and half of the other split (two such models, each half in turn):
  its accuracy on the other split must be within binomial noise of that on held-out train.
  Much lower: the other split's labels or inputs are not what train's are (labels coded
  differently show as one class predicted as another). Both accuracies come from the same
  models, so a clean split is as often a little above as below."""
  ref, other = names
  rows = subsample(len(y_train), max_examples)
  other_rows = subsample(len(y_other), max_examples, seed=1)
  if len(rows) < 2 or not len(other_rows):  # each half of ref trains a model: two rows at least
    return Verdict(f'train_to_{other}', 'WARN', f'too few examples to compare ({len(rows)} of '
                   f'{ref}, {len(other_rows)} of {other})', {})
  x = np.concatenate(_model_inputs(np.asarray(x_train)[rows], np.asarray(x_other)[other_rows]))
  y = np.concatenate([np.asarray(y_train)[rows], np.asarray(y_other)[other_rows]])
  fold_of = np.concatenate([np.arange(len(rows)) % 2, np.arange(len(other_rows)) % 2])
  in_ref = np.arange(len(y)) < len(rows)
  probabilities = data_checks.cross_validated_probabilities(
      x, y, num_classes, folds=2, steps=steps, fold_of=fold_of, trainable=in_ref)
  predicted = probabilities.argmax(-1)
  ref_accuracy = float(np.mean(predicted[in_ref] == y[in_ref]))
  other_accuracy = float(np.mean(predicted[~in_ref] == y[~in_ref]))
  z = noise.splits_apart(ref_accuracy, int(in_ref.sum()), other_accuracy, int((~in_ref).sum()))
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (y[~in_ref], predicted[~in_ref]), 1)
  moved = [(int(t), int(confusion[t].argmax()), float(confusion[t].max() / confusion[t].sum()))
           for t in range(num_classes) if confusion[t].sum() and confusion[t].argmax() != t]
  evidence = {f'{ref}_held_out_accuracy': ref_accuracy,
              f'{other}_accuracy': other_accuracy, 'z': float(z), 'z_max': z_max,
              f'{other}_labels_mostly_predicted_as': [
                  {'label': t, 'predicted': p, 'fraction': round(f, 3)} for t, p, f in moved]}
  line = (f'a small model trained on half of {ref} ({len(rows) // 2} examples) reaches '
          f'{other_accuracy:.1%} on {other} and {ref_accuracy:.1%} on the other half of {ref}: '
          f'{other} {abs(z):.1f} standard errors {"lower" if z > 0 else "higher"}')
  if z > z_max:
    mapping = ', '.join(f'{t} -> {p} ({f:.0%})' for t, p, f in moved[:5])
    return Verdict(f'train_to_{other}', 'FAIL', f'{line}: {other} is not labelled or processed '
                   f'like {ref}' + (f'; {other} labels mostly predicted as another class: '
                                    f'{mapping} (labels coded differently?)' if moved else ''),
                   evidence)
  return Verdict(f'train_to_{other}', 'PASS', line, evidence)
