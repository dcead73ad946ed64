"""Recipe step 1, "become one with the data": checks on raw arrays, each returning Verdicts.

Plain functions over numpy arrays (`splits` maps a split name to (x, y)), so they work on any
dataset a user has in memory, not only through the inspect stage.
"""
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recipe_jax import words
from recipe_jax.verdicts import Verdict

MAX_LISTED = 100  # indices listed in evidence per finding
NAMED = 3  # examples named in a verdict's sentence


def where(split: str, indices, rows: dict | None = None, limit: int = NAMED) -> str:
  """Words for examples of a split: 'train rows 5, 1203 and 2 more' (rows of the user's file,
  `rows[split]` mapping a carved split's positions to them; validation is carved from the
  source train split), else positions in the split."""
  indices = [int(i) for i in indices]
  if rows is not None and split in rows:
    source = {'val': 'train'}.get(split, split)
    shown = [int(rows[split][i]) for i in indices[:limit]]
    text = f"{source} row{'s' if len(indices) > 1 else ''} {', '.join(map(str, shown))}"
  else:
    shown = ', '.join(map(str, indices[:limit]))
    text = f"{split} example{'s' if len(indices) > 1 else ''} {shown}"
  return text + (f' and {len(indices) - limit} more' if len(indices) > limit else '')


def _position(index: int, example_shape) -> str:
  return f'{index} {tuple(int(p) for p in np.unravel_index(index, example_shape))}' \
      if len(example_shape) > 1 else str(index)


def _rows(x):
  x = np.asarray(x)
  return x.reshape(len(x), int(np.prod(x.shape[1:])))  # -1 cannot be inferred for 0 rows


def basic_statistics(splits: dict, rows: dict | None = None) -> list:
  """Sizes, shapes, dtypes, ranges (PASS), NaN/Inf (FAIL), features constant in train (WARN),
  each naming the rows and features."""
  stats, non_finite, bad_features = {}, {}, {}
  for name, (x, y) in splits.items():
    values = _rows(x).astype(np.float64)
    if name == 'train':
      train_rows = values  # reused below for the constant-feature check
    finite = np.isfinite(values)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    stats[name] = {'examples': len(y), 'shape': list(np.shape(x)[1:]), 'dtype': str(x.dtype),
                   'min': float(np.min(values, where=finite, initial=np.inf)),
                   'max': float(np.max(values, where=finite, initial=-np.inf)),
                   'nan': int(np.isnan(values).sum()), 'inf': int(np.isinf(values).sum())}
    if len(bad_rows):
      non_finite[name] = bad_rows[:MAX_LISTED].tolist()
      bad_features[name] = np.flatnonzero(~finite.all(axis=0))[:MAX_LISTED].tolist()
  verdicts = [Verdict('sizes_and_ranges', 'PASS', '; '.join(
      f"{n}: {s['examples']} x {s['shape']} {s['dtype']} in [{s['min']:.3g}, {s['max']:.3g}]"
      for n, s in stats.items()), stats)]
  if non_finite:
    counts = {n: stats[n]['nan'] + stats[n]['inf'] for n in non_finite}
    shape = np.shape(splits['train'][0])[1:]
    verdicts.append(Verdict('non_finite_values', 'FAIL', 'NaN/Inf values in ' + '; '.join(
        f'{n}: {c} values in {where(n, non_finite[n], rows)}, features '
        f"{', '.join(_position(f, shape) for f in bad_features[n][:NAMED])}"
        for n, c in counts.items()) + ': training on them gives NaN losses; drop or impute '
        'these rows (or features)',
        {'rows_with_non_finite': non_finite, 'counts': counts, 'features': bad_features}))
  else:
    verdicts.append(Verdict('non_finite_values', 'PASS', 'no NaN or Inf values', {}))
  constant = np.flatnonzero(np.nanmax(train_rows, 0) == np.nanmin(train_rows, 0))
  status = 'WARN' if len(constant) else 'PASS'
  shape = np.shape(splits['train'][0])[1:]
  named = ', '.join(f'{_position(f, shape)} = {train_rows[0, f]:.3g}' for f in constant[:NAMED])
  verdicts.append(Verdict('constant_features', status,
                          f'{len(constant)} of {train_rows.shape[1]} input features are constant '
                          f'in train: {named}' + (f' and {len(constant) - NAMED} more'
                                                  if len(constant) > NAMED else '') +
                          ' (they carry no information; normalisation leaves them at 0)'
                          if len(constant) else 'no input feature is constant in train',
                          {'constant_feature_indices': constant[:MAX_LISTED].tolist(),
                           'count': int(len(constant))}))
  return verdicts


def class_balance(splits: dict, num_classes: int, max_imbalance: float) -> Verdict:
  """Counts per class and split; FAIL when test has classes train lacks, WARN when imbalanced."""
  counts = {n: np.bincount(y, minlength=num_classes).tolist() for n, (_, y) in splits.items()}
  train = np.asarray(counts['train'])
  missing = [c for c in range(num_classes) if train[c] == 0 and counts['test'][c] > 0]
  present = train[train > 0]
  ratio = float(present.max() / present.min())
  evidence = {'counts': counts, 'imbalance_ratio': ratio, 'test_classes_missing_in_train': missing}
  if missing:
    return Verdict('class_balance', 'FAIL',
                   f'classes {missing} occur in test but never in train', evidence)
  status = 'WARN' if ratio > max_imbalance else 'PASS'
  largest = int(np.argmax(np.where(train > 0, train, -1)))
  smallest = int(np.argmin(np.where(train > 0, train, np.iinfo(train.dtype).max)))
  evidence.update(largest_class=largest, smallest_class=smallest)
  line = (f'largest / smallest train class = {words.beside(ratio, max_imbalance)} (class '
          f'{largest}: {train[largest]} examples, class {smallest}: {train[smallest]}; warn '
          f'above {max_imbalance:g})')
  if status == 'WARN':
    share = train[smallest] / train.sum()
    line += (f': a model that never predicts class {smallest} loses only {share:.1%} accuracy, '
             'so accuracy hides it; watch its recall (the error analysis), weigh the classes '
             'in the loss or resample them')
  return Verdict('class_balance', status, line, evidence)


def content_hashes(x) -> list:
  rows = np.ascontiguousarray(_rows(x))
  return [hashlib.sha1(row.tobytes()).hexdigest() for row in rows]


def exact_duplicates(splits: dict, rows: dict | None = None) -> list:
  """Identical inputs: within a split (WARN), across splits (FAIL: leakage), and identical
  inputs with different labels anywhere (FAIL); each names an example group by its rows."""
  groups = {}
  for name, (x, y) in splits.items():
    for index, (digest, label) in enumerate(zip(content_hashes(x), y)):
      groups.setdefault(digest, []).append((name, index, int(label)))
  within, across, conflicting = {}, [], []
  for members in groups.values():
    if len(members) < 2:
      continue
    names = {m[0] for m in members}
    for name in names:
      same_split = [m[1] for m in members if m[0] == name]
      if len(same_split) > 1:
        within.setdefault(name, []).append(same_split)
    if len(names) > 1:
      across.append([[m[0], m[1]] for m in members])
    if len({m[2] for m in members}) > 1:
      conflicting.append([list(m) for m in members])
  extra = {n: sum(len(g) - 1 for g in gs) for n, gs in within.items()}
  group_words = lambda group: ' = '.join(where(split, [i], rows) for split, i, *_ in group[:3])
  verdicts = [
      Verdict('duplicates_within_splits', 'WARN' if within else 'PASS',
              '; '.join(f'{n}: {c} redundant copies (e.g. {where(n, within[n][0], rows)} are '
                        'the same input)' for n, c in extra.items()) +
              ': they weigh those examples double in training and in the metrics'
              if within else 'no split holds the same input twice',
              {'groups': {n: gs[:MAX_LISTED] for n, gs in within.items()}, 'redundant': extra}),
      Verdict('duplicates_across_splits', 'FAIL' if across else 'PASS',
              f'{len(across)} inputs appear in more than one split (leakage), e.g. '
              f'{group_words(across[0])}: the metric on those rows measures memory, not '
              'generalisation; drop them from one side' if across else
              'no input appears in two splits', {'groups': across[:MAX_LISTED]}),
      Verdict('conflicting_labels', 'FAIL' if conflicting else 'PASS',
              f'{len(conflicting)} identical inputs carry different labels, e.g. ' +
              ' and '.join(f'{where(s, [i], rows)} (label {lab})' for s, i, lab in
                           conflicting[0][:3]) + ': at most one of them can be right'
              if conflicting else 'identical inputs always carry the same label',
              {'groups': conflicting[:MAX_LISTED]})]
  return verdicts


STD_FLOOR_FRACTION = 0.5  # of the typical feature std; see _standardise


def _standardise(x_train, *others):
  """Per-feature standardisation with train statistics, each feature's std floored at half the
  typical (root-mean-square) feature std. Without the floor a nearly constant feature (a
  border pixel, a silent channel) turns tiny perturbations into huge distances, and a noisy
  copy of a training example no longer looks near. Non-finite values count as the mean (they are
  reported by `basic_statistics`), so one Inf does not hide every other finding."""
  finite = lambda a: np.where(np.isfinite(a), a, np.nan)  # a NaN/Inf must not poison a column
  rows = finite(_rows(x_train).astype(np.float32))
  mean, std = np.nan_to_num(np.nanmean(rows, 0)), np.nan_to_num(np.nanstd(rows, 0))
  typical = float(np.sqrt(np.mean(std ** 2))) if std.size else 0.0
  std = np.maximum(std, STD_FLOOR_FRACTION * typical if typical > 0 else 1.0)
  scale = lambda a: np.nan_to_num((finite(_rows(a).astype(np.float32)) - mean) / std)
  return [scale(a) for a in (x_train, *others)]


@functools.partial(jax.jit, static_argnames=('block',))
def _nearest(queries, reference, block: int):
  """Per query: (squared distance, index) of the nearest reference row, in reference blocks."""
  num_blocks = -(-reference.shape[0] // block)
  padded = jnp.pad(reference, ((0, num_blocks * block - reference.shape[0]), (0, 0)))
  valid = jnp.arange(num_blocks * block) < reference.shape[0]
  q_norms = jnp.sum(queries ** 2, axis=1)

  def scan_block(best, b):
    rows = jax.lax.dynamic_slice_in_dim(padded, b * block, block)
    d2 = q_norms[:, None] + jnp.sum(rows ** 2, 1)[None] - 2 * queries @ rows.T
    d2 = jnp.where(jax.lax.dynamic_slice_in_dim(valid, b * block, block)[None], d2, jnp.inf)
    j = jnp.argmin(d2, axis=1)
    d = jnp.take_along_axis(d2, j[:, None], 1)[:, 0]
    better = d < best[0]
    return (jnp.where(better, d, best[0]), jnp.where(better, j + b * block, best[1])), None

  init = (jnp.full(queries.shape[0], jnp.inf), jnp.zeros(queries.shape[0], jnp.int32))
  (d2, index), _ = jax.lax.scan(scan_block, init, jnp.arange(num_blocks))
  return jnp.maximum(d2, 0.0), index


def nearest_train_neighbour(x_train, x_query, block: int = 2048):
  """RMS per-feature distance (in train-standardised space) and index of each query's nearest
  training example, computed blockwise on the default device."""
  train, queries = _standardise(x_train, x_query)
  reference = jnp.asarray(train)
  distances, indices = [], []
  for start in range(0, len(queries), block):  # query blocks bound the distance matrix's size
    d2, index = _nearest(jnp.asarray(queries[start:start + block]), reference, block)
    distances.append(np.sqrt(np.asarray(d2) / train.shape[1]))
    indices.append(np.asarray(index))
  return np.concatenate(distances), np.concatenate(indices)


def near_duplicate_leakage(splits: dict, rms_threshold: float, rows: dict | None = None) -> list:
  """Val/test examples whose nearest training example is within `rms_threshold` (FAIL).

  Validation is compared with train; test with train and validation together, the whole
  training file a user has (a test example copied from it leaks whichever part it fell into).
  Evidence: `leaked_<split>_indices` and, aligned with them, `nearest_splits` and
  `nearest_indices` (positions in those splits)."""
  verdicts = []
  for name in ('val', 'test'):
    if name not in splits or not len(splits[name][1]):
      continue
    references = [s for s in (('train',) if name == 'val' else ('train', 'val'))
                  if s in splits and len(splits[s][1])]
    owner = np.concatenate([[s] * len(splits[s][1]) for s in references])
    position = np.concatenate([np.arange(len(splits[s][1])) for s in references])
    reference = np.concatenate([splits[s][0] for s in references])
    distance, nearest = nearest_train_neighbour(reference, splits[name][0])
    clean = np.nan_to_num(distance, nan=np.inf)
    leaked = np.flatnonzero(clean < rms_threshold)
    order = leaked[np.argsort(clean[leaked])][:MAX_LISTED]
    evidence = {f'leaked_{name}_indices': order.tolist(),
                'nearest_splits': owner[nearest[order]].tolist(),
                'nearest_indices': position[nearest[order]].tolist(),
                'rms_distances': clean[order].round(5).tolist(),
                'count': int(len(leaked)), 'rms_threshold': rms_threshold,
                'median_nearest_rms_distance': float(np.median(clean[np.isfinite(clean)]))
                if np.isfinite(clean).any() else None}
    line = (f'{len(leaked)} {name} examples are within RMS distance {rms_threshold:g} of a '
            f'{" or ".join(references)} example (median nearest distance '
            f'{evidence["median_nearest_rms_distance"]:.3g})')
    if len(leaked):
      first = order[0]
      line += (f', e.g. {where(name, [first], rows)} at {clean[first]:.3g} from '
               f'{where(owner[nearest[first]], [position[nearest[first]]], rows)}: those '
               f'{name} examples measure memory, not generalisation; drop them')
    verdicts.append(Verdict(f'near_duplicates_{name}_train', 'FAIL' if len(leaked) else 'PASS',
                            line, evidence))
  return verdicts


def outliers(x, y, num_classes: int, z_threshold: float, rows: dict | None = None) -> Verdict:
  """Examples far from their class mean: robust z-score (median / MAD within the class) of the
  RMS distance to the class mean, in standardised space. WARN with the ranked list."""
  [standardised] = _standardise(x)
  z = np.zeros(len(y))
  for c in range(num_classes):
    members = np.flatnonzero(y == c)
    if len(members) < 3:
      continue
    distance = np.sqrt(((standardised[members] - standardised[members].mean(0)) ** 2).mean(1))
    mad = np.median(np.abs(distance - np.median(distance))) * 1.4826 + 1e-12
    z[members] = (distance - np.median(distance)) / mad
  flagged = np.flatnonzero(z > z_threshold)
  order = flagged[np.argsort(-z[flagged])]
  named = ', '.join(f'{where("train", [i], rows)} (class {y[i]}, z {z[i]:.1f})'
                    for i in order[:NAMED])
  return Verdict('outliers', 'WARN' if len(flagged) else 'PASS',
                 f'{len(flagged)} train examples lie more than {z_threshold:g} robust standard '
                 'deviations farther from their class mean than is typical' +
                 (f', the farthest {named}: look at them (outliers.png); a corrupted or '
                  'mislabelled row pulls the model, a rare but real one is worth keeping'
                  if len(flagged) else ''),
                 {'indices': order[:MAX_LISTED].tolist(), 'z': z[order[:MAX_LISTED]].round(2).tolist(),
                  'count': int(len(flagged)), 'examples': int(len(y)), 'z_threshold': z_threshold})


def cross_validated_probabilities(x, y, num_classes: int, folds: int = 5, steps: int = 300,
                                  hidden: int = 128, seed: int = 0, fold_of=None,
                                  trainable=None) -> np.ndarray:
  """Out-of-sample class probabilities: each fold predicted by a small MLP trained in JAX
  (full batch, Adam) on the other folds (their `trainable` rows only, when given: a split that
  is predicted but never trained on). Every fold trains on all rows with a 0/1 weight, so the
  fit compiles once for all folds."""
  [rows] = _standardise(x)
  if fold_of is None:
    fold_of = np.random.default_rng(seed).permutation(len(y)) % folds
  trainable = np.ones(len(y), bool) if trainable is None else np.asarray(trainable, bool)
  inputs, labels = jnp.asarray(rows), jnp.asarray(y, jnp.int32)
  probabilities = np.zeros((len(y), num_classes), np.float32)
  for k in range(folds):
    held_out = fold_of == k
    weights = jnp.asarray(trainable & ~held_out, jnp.float32)
    params = _fit_mlp(inputs, labels, weights, jax.random.fold_in(jax.random.key(seed), k),
                      num_classes, hidden, steps)
    probabilities[held_out] = np.asarray(_mlp_probabilities(params, inputs))[held_out]
  return probabilities


_MLP_OPTIMIZER = optax.adamw(1e-2, weight_decay=1e-3)


def _mlp_logits(params, inputs):
  return jax.nn.relu(inputs @ params['w1'] + params['b1']) @ params['w2'] + params['b2']


_mlp_probabilities = jax.jit(lambda params, inputs: jax.nn.softmax(_mlp_logits(params, inputs)))


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _fit_mlp(inputs, labels, weights, key, num_classes: int, hidden: int, steps: int):
  """The label-noise and shift checks' small MLP, fitted full batch to the weighted rows."""
  k1, k2 = jax.random.split(key)
  d = inputs.shape[1]
  params = {'w1': jax.random.normal(k1, (d, hidden)) / np.sqrt(d), 'b1': jnp.zeros(hidden),
            'w2': jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden),
            'b2': jnp.zeros(num_classes)}

  def step(carry, _):
    params, opt_state = carry
    loss = lambda p: jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(
        _mlp_logits(p, inputs), labels)) / jnp.sum(weights)
    updates, opt_state = _MLP_OPTIMIZER.update(jax.grad(loss)(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, _MLP_OPTIMIZER.init(params)), None, length=steps)
  return params


def label_pairs(given, predicted, num_classes: int, top: int = 5) -> list:
  """The most frequent (given, predicted) disagreements: [{'given', 'predicted', 'count',
  'share_of_class' (of the examples given that label), 'share_of_errors'}]."""
  wrong = given != predicted
  if not np.any(wrong):
    return []
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (given[wrong], predicted[wrong]), 1)
  per_class = np.maximum(np.bincount(given, minlength=num_classes), 1)
  order = np.argsort(-counts, axis=None)[:top]
  return [{'given': int(g), 'predicted': int(p), 'count': int(counts[g, p]),
           'reverse_count': int(counts[p, g]),
           'share_of_class': float(counts[g, p] / per_class[g]),
           'share_of_errors': float(counts[g, p] / wrong.sum())}
          for g, p in zip(*np.unravel_index(order, counts.shape)) if counts[g, p]]


def label_block(given, predicted, rows, num_classes: int, chunks: int = 20,
                min_share: float = 0.05, max_p: float = 1e-6, min_v: float = 0.3) -> dict | None:
  """A contiguous run of the file's rows where the labels mean something else: for the same
  given label, a model predicts other classes there than elsewhere (two sources merged, one
  with another label encoding; a corrupted shard). Every block between `chunks` equal cuts
  of the rows (in file order) is tested: per given label, the predicted classes inside
  against outside (chi-squared, pooled over the labels found on both sides about as often as
  the block's share of the rows); the block with the largest effect (Cramér's V) is returned
  when V >= `min_v`, p < `max_p` and it holds `min_share` of the rows.
  """
  from scipy import stats
  order = np.argsort(rows, kind='stable')
  given, predicted, rows = given[order], predicted[order], np.asarray(rows)[order]
  n = len(given)
  cuts = np.unique(np.linspace(0, n, min(chunks, max(n // 20, 2)) + 1).round().astype(int))
  best = None
  for i, start in enumerate(cuts[:-1]):
    for end in cuts[i + 1:]:
      if (start, end) == (0, n) or end - start < min_share * n:
        continue
      inside = np.zeros(n, bool)
      inside[start:end] = True
      chi2, dof, used = 0.0, 0, 0
      share = (end - start) / n
      for label in range(num_classes):
        mine = given == label
        a = np.bincount(predicted[mine & inside], minlength=num_classes)
        b = np.bincount(predicted[mine & ~inside], minlength=num_classes)
        # A label far rarer on one side than its share of the rows (a file sorted by class)
        # would compare its few mislabelled strays there with its own examples elsewhere.
        total = a.sum() + b.sum()
        if min(a.sum(), b.sum()) < 3 or a.sum() < 0.5 * share * total or \
            b.sum() < 0.5 * (1 - share) * total:
          continue
        table = np.stack([a, b])[:, (a + b) > 0]
        if table.shape[1] < 2:
          continue
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        chi2 += float(((table - expected) ** 2 / expected).sum())
        dof += table.shape[1] - 1
        used += int(table.sum())
      if not dof:
        continue
      v = float(np.sqrt(chi2 / used))
      if best is None or v > best['cramers_v']:
        best = {'start': int(start), 'end': int(end), 'cramers_v': v,
                'p': float(stats.chi2.sf(chi2, dof)), 'dof': dof}
  if best is None or best['cramers_v'] < min_v or best['p'] >= max_p:
    return None
  inside = np.zeros(n, bool)
  inside[best['start']:best['end']] = True
  remap = []
  for label in range(num_classes):
    mine = given == label
    if (mine & inside).sum() >= max(3, 0.5 * inside.mean() * mine.sum()) and \
        (mine & ~inside).sum() >= max(3, 0.5 * (1 - inside.mean()) * mine.sum()):
      there = int(np.bincount(predicted[mine & inside], minlength=num_classes).argmax())
      elsewhere = int(np.bincount(predicted[mine & ~inside], minlength=num_classes).argmax())
      if there != elsewhere:
        remap.append({'label': label, 'predicted_inside': there, 'predicted_outside': elsewhere})
  agree = given == predicted
  return {**best, 'first_row': int(rows[best['start']]), 'last_row': int(rows[best['end'] - 1]),
          'rows': int(best['end'] - best['start']), 'share': float(inside.mean()),
          'accuracy_inside': float(agree[inside].mean()),
          'accuracy_outside': float(agree[~inside].mean()), 'remapped': remap}


def label_structure(given, predicted, rows, num_classes: int) -> dict:
  """How a model's disagreements with the labels are arranged: a block of rows where labels
  mean something else, and pairs of classes that take most of the errors (a systematic
  confusion) or errors spread over many pairs (random noise, or a hard task)."""
  given, predicted = np.asarray(given), np.asarray(predicted)
  pairs = label_pairs(given, predicted, num_classes)
  dominant = [p for p in pairs if p['count'] >= 5 and p['share_of_errors'] >= 0.25
              and p['share_of_class'] >= 0.1]
  return {'block': label_block(given, predicted, rows, num_classes), 'pairs': pairs,
          'dominant_pairs': dominant, 'errors': int((given != predicted).sum())}


def describe_structure(structure: dict) -> str | None:
  """Words for `label_structure`'s finding, or None when there is none."""
  block, dominant = structure['block'], structure['dominant_pairs']
  if block:
    moved = block['remapped'][:4]
    inside = ', '.join(f"{m['label']} as {m['predicted_inside']}" for m in moved)
    outside = ', '.join(f"{m['label']} as {m['predicted_outside']}" for m in moved)
    where = (f"rows {block['first_row']} to {block['last_row']} ({block['share']:.0%} of the "
             'file) and the other rows')
    return (f'{where} use their labels differently: a model agrees with the labels on '
            f"{block['accuracy_inside']:.0%} of the first and {block['accuracy_outside']:.0%} "
            'of the second' + (f'; in the first, label {inside} (label: what a model predicts '
                               f'for its examples); in the second, {outside}' if moved else '') +
            f" (Cramér's V {block['cramers_v']:.2f}): two sources with different label "
            'encodings merged, or a corrupted block')
  if dominant:
    named = '; '.join(f"{p['count']} labelled {p['given']} look like {p['predicted']} "
                      f"({p['share_of_class']:.0%} of the {p['given']}s, "
                      f"{p.get('reverse_count', 0)} the other way)" for p in dominant[:3])
    share = sum(p['share_of_errors'] for p in dominant)
    head = f'{share:.0%} of the disagreements are {len(dominant)} class pair(s): {named}: '
    if all(both_ways(p) for p in dominant):
      return head + ('confused both ways, as two classes that look alike are (a hard pair, '
                     'not wrong labels): more examples of both, or inputs that tell them apart')
    return head + ('one way much more than the other: labels mixed up (an annotator or a '
                   'mapping) more likely than two classes that look alike, not random noise')
  return None


def both_ways(pair: dict) -> bool:
  """A class pair confused about as often in each direction: classes alike, not a mapping
  (which moves one class's examples to the other, one way)."""
  return pair.get('reverse_count', 0) >= 0.5 * pair['count']


def label_noise(y, probabilities: np.ndarray, min_model_accuracy: float = 0.8,
                rows=None) -> Verdict:
  """Confident learning: the given label's probability is under its class's threshold (the
  mean self-confidence of that class) while another class is over its own threshold.
  Ranked by how much more the model believes the suggested class.

  Then the structure of the disagreements (`label_structure`, with `rows` the examples' rows
  in the user's file): a block of rows with another label encoding, or a class pair taking most
  errors, is named whatever the model's accuracy (such labels are what drag it down). Without
  structure, a model below `min_model_accuracy` cannot judge single labels: its errors are
  those of a hard task, not evidence of noise."""
  num_classes = probabilities.shape[1]
  y = np.asarray(y)
  rows = np.arange(len(y)) if rows is None else np.asarray(rows)
  thresholds = np.array([probabilities[y == c, c].mean() if np.any(y == c) else 1.0
                         for c in range(num_classes)])
  given = probabilities[np.arange(len(y)), y]
  others = np.where(np.eye(num_classes, dtype=bool)[y], -np.inf, probabilities)
  confident_other = np.where(others >= thresholds[None], others, -np.inf)
  suggested = np.argmax(confident_other, axis=1)
  suspect = (given < thresholds[y]) & np.isfinite(confident_other.max(axis=1))
  margin = confident_other.max(axis=1) - given
  order = np.flatnonzero(suspect)[np.argsort(-margin[suspect])]
  predicted = np.argmax(probabilities, 1)
  accuracy = float(np.mean(predicted == y))
  structure = label_structure(y, predicted, rows, num_classes)
  evidence = {'indices': order[:MAX_LISTED].tolist(),
              'given_labels': y[order[:MAX_LISTED]].tolist(),
              'suggested_labels': suggested[order[:MAX_LISTED]].tolist(),
              'margins': margin[order[:MAX_LISTED]].round(3).tolist(),
              'count': int(len(order)), 'class_thresholds': thresholds.round(3).tolist(),
              'model_accuracy': accuracy, 'min_model_accuracy': min_model_accuracy,
              'structure': structure}
  found = describe_structure(structure)
  checked = f'a cross-validated model reaches {accuracy:.1%}'
  if structure['block']:
    return Verdict('label_noise', 'FAIL', f'{checked}, and {found}', evidence,
                   cause='labels_by_rows')
  if found:
    alike = all(both_ways(p) for p in structure['dominant_pairs'])
    return Verdict('label_noise', 'WARN', f'{checked}; {found}', evidence,
                   cause='classes_alike' if alike else 'systematic_confusion')
  spread = (f'its disagreements are spread over class pairs (the largest, {structure["pairs"][0]["given"]}'
            f' as {structure["pairs"][0]["predicted"]}, takes {structure["pairs"][0]["share_of_errors"]:.0%})'
            ' and evenly along the rows' if structure['pairs'] else 'it agrees with every label')
  if accuracy < min_model_accuracy:
    return Verdict('label_noise', 'PASS', f'{checked} (< {min_model_accuracy:.0%}): too weak to '
                   f'judge single labels, and {spread}: the errors of a hard task, no sign of '
                   'systematic label errors', evidence, cause='hard_task')
  if len(order):
    named = ', '.join(f'row {rows[i]} (labelled {y[i]}, looks like {suggested[i]})'
                      for i in order[:NAMED])
    return Verdict('label_noise', 'WARN', f'{len(order)} train examples look mislabelled to a '
                   f'cross-validated model ({checked}; confident learning), the surest {named}; '
                   f'{spread}: random label noise, listed by how sure the model is '
                   '(label_noise.png): relabel the sure ones or drop them', evidence,
                   cause='random_label_noise')
  return Verdict('label_noise', 'PASS', f'no train example looks mislabelled ({checked}; '
                 'confident learning)', evidence)
