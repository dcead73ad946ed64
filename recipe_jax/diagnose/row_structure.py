"""Structure along the rows of one file: a contiguous block of rows whose inputs differ from the
rest (processed differently, another source, a corrupted shard), told apart from a slow trend
(data collected over time) and from a file sorted by class.

Plain functions over numpy arrays. Each row is summarised by a few numbers (its mean and spread
over the standardised features, its distance from its class's mean input, and its first
principal components within the classes), each taken within its class (minus the class's
mean), so a file sorted by class has no structure left. Every block between equal cuts of the
rows is scored by the effect size of its difference from the rest (Cohen's d); the best
block's edges are then refined to the exact rows. A linear trend along the rows is fitted
too: a block that stays once the trend is removed is abrupt, one that does not is a trend.
"""
import numpy as np

from recipe_jax.diagnose import data_checks
from recipe_jax.verdicts import Verdict

COMPONENTS = 4  # principal components of the within-class features, beside mean and spread
CUTS = 40  # equal cuts of the rows between which blocks are tried


def _summaries(x, y, num_classes: int) -> tuple[dict, np.ndarray]:
  """({name: per-row value, within its class and in units of its spread}, each row's
  standardised features minus its class's mean)."""
  [flat] = data_checks._standardise(x)
  flat = flat.astype(np.float64)
  found = {'mean': flat.mean(1), 'spread': flat.std(1)}
  means = np.zeros((num_classes, flat.shape[1]))
  for c in np.unique(y):
    means[c] = flat[y == c].mean(0)
  residual = flat - means[y]
  found['distance'] = np.sqrt((residual ** 2).mean(1))  # from its class's mean input
  k = min(COMPONENTS, flat.shape[1] - 1)
  if k > 0:
    _, _, vt = np.linalg.svd(residual - residual.mean(0), full_matrices=False)
    for i in range(k):
      found[f'component {i + 1}'] = residual @ vt[i]
  out = {}
  for name, value in found.items():
    for c in np.unique(y):
      value[y == c] -= value[y == c].mean()
    spread = value.std()
    if spread > 1e-12:
      out[name] = value / spread
  return out, residual


def _sums(value):
  """Prefix sums of the values and their squares: any block's mean and variance in O(1)."""
  return np.concatenate([[0], np.cumsum(value)]), np.concatenate([[0], np.cumsum(value ** 2)])


def _block_effects(value: np.ndarray, cuts: np.ndarray, min_rows: int):
  """(d, start, end) of every block between cuts: (mean inside - mean outside) / pooled std."""
  n = len(value)
  total, squares = _sums(value)
  found = []
  for i, start in enumerate(cuts[:-1]):
    for end in cuts[i + 1:]:
      inside = end - start
      if inside < min_rows or n - inside < min_rows:
        continue
      found.append((_d(total, squares, n, start, end), int(start), int(end)))
  return found


def _d(total, squares, n, start, end) -> float:
  inside = end - start
  s_in, q_in = total[end] - total[start], squares[end] - squares[start]
  s_out, q_out = total[n] - s_in, squares[n] - q_in
  m_in, m_out = s_in / inside, s_out / (n - inside)
  var = ((q_in - inside * m_in ** 2) + (q_out - (n - inside) * m_out ** 2)) / max(n - 2, 1)
  return float((m_in - m_out) / np.sqrt(max(var, 1e-12)))


def _refine(value, start: int, end: int, step: int, min_rows: int) -> tuple[int, int]:
  """The block's edges moved, each within one cut, to where the effect is largest."""
  n = len(value)
  total, squares = _sums(value)
  effect = lambda a, b: abs(_d(total, squares, n, a, b)) if min_rows <= b - a <= n - min_rows \
      else -1.0
  start = max(range(max(0, start - step), min(end, start + step) + 1),
              key=lambda a: effect(a, end))
  end = max(range(max(start + 1, end - step), min(n, end + step) + 1),
            key=lambda b: effect(start, b))
  return start, end


def _trend(value: np.ndarray) -> tuple[float, np.ndarray]:
  """(R^2 of a straight line along the rows, the value without it)."""
  position = np.linspace(-1, 1, len(value))
  slope = float(np.dot(position, value) / np.dot(position, position))
  fitted = slope * position
  residual = value - fitted
  r2 = 1 - residual.var() / max(value.var(), 1e-12)
  return float(r2), residual


def input_blocks(x, y, rows, num_classes: int, split: str, min_effect: float = 1.0,
                 min_trend: float = 0.2, min_share: float = 0.02, min_z: float = 8.0,
                 max_examples: int = 20000, label_block: dict | None = None) -> Verdict:
  """Within one file (`split`: its rows, `rows` their positions in the file), a block of rows
  whose inputs differ from the others' (WARN: where, how much and in what), or a gradual
  trend along the rows (WARN, said to be a trend). The block must differ by `min_effect`
  (Cohen's d, within-class) after a linear trend is removed, be `min_z` standard errors
  clear of chance, and hold `min_share` of the rows; a trend must explain `min_trend` of a
  summary's variance. A file sorted by class, or shuffled, stays quiet. `label_block`
  (label_noise's: rows whose labels mean something else) makes inputs look different within
  their given class too: a block that overlaps it is that block, not the inputs'."""
  order = np.argsort(np.asarray(rows), kind='stable')
  subsampled = len(order) > max_examples
  if subsampled:  # evenly along the file, keeping its order
    order = order[np.linspace(0, len(order) - 1, max_examples).round().astype(int)]
  x, y, rows = np.asarray(x)[order], np.asarray(y)[order], np.asarray(rows)[order]
  n = len(y)
  check = f'input_blocks_{split}'
  evidence = {'rows_checked': int(n), 'min_effect': min_effect, 'min_trend': min_trend}
  if n < 50:
    return Verdict(check, 'PASS', f'{n} rows: too few to look for blocks', evidence)
  summaries, residual = _summaries(x, y, num_classes)
  cuts = np.unique(np.linspace(0, n, CUTS + 1).round().astype(int))
  min_rows = max(int(min_share * n), 5)
  best, trend = None, (None, 0.0)
  for name, value in summaries.items():
    r2 = _trend(value)[0]
    if r2 > trend[1]:
      trend = (name, r2)
    for d, start, end in _block_effects(value, cuts, min_rows):
      if best is None or abs(d) > abs(best[1]):
        best = (name, d, start, end)
  if best is None:  # every summary is constant: the inputs do not vary within their classes
    return Verdict(check, 'PASS', f'the inputs do not vary within their classes along the '
                   f'{split} file: no block or trend to find', evidence)
  name, d, start, end = best
  start, end = _refine(summaries[name], start, end, int(np.ceil(n / CUTS)), min_rows)
  inside = end - start
  r2, detrended = _trend(summaries[name])
  abrupt = _d(*_sums(detrended), n, start, end)
  z = abs(abrupt) / np.sqrt(1 / inside + 1 / (n - inside))
  evidence.update(summary=name, effect=float(_d(*_sums(summaries[name]), n, start, end)),
                  effect_without_trend=float(abrupt), z=float(z), first_row=int(rows[start]),
                  last_row=int(rows[end - 1]), block_rows=int(inside), share=inside / n,
                  trend_summary=trend[0], trend_r2=float(trend[1]))
  where = (f'rows {rows[start]} to {rows[end - 1]} of the {split} file ({inside / n:.0%} of '
           'the rows' + (f', {inside} of the {n} checked' if subsampled else f', {inside}') + ')')
  rows_named = {'split': split, 'rows': [int(rows[start]), int(rows[end - 1])]}
  if abs(abrupt) >= min_effect and z >= min_z and label_block is not None:
    overlap = min(rows[end - 1], label_block['last_row']) - max(rows[start],
                                                                 label_block['first_row'])
    if overlap >= 0.5 * (rows[end - 1] - rows[start]):
      return Verdict(check, 'PASS', f'{where} look different within their given classes, '
                     f"because their labels mean something else there (label_noise: rows "
                     f"{label_block['first_row']} to {label_block['last_row']}): not a block of "
                     'the inputs', evidence, cause='labels_block', where=rows_named)
  if abs(abrupt) >= min_effect and z >= min_z:
    how = _how(x, y, residual, start, end, name, abrupt)
    evidence['features'] = how[1]
    return Verdict(check, 'WARN', f'{where} differ from the rest of the file: {how[0]} (effect '
                   f'{abs(abrupt):.1f} standard deviations within their classes, WARN from '
                   f'{min_effect:g}); an abrupt block, not a trend: rows processed '
                   'differently or from another source; the split comparisons see it as drift '
                   'and a model learns its statistics: check how those rows were made',
                   evidence, cause='input_block',
                   where={**rows_named, 'features': list(how[1])})
  if trend[1] >= min_trend:
    return Verdict(check, 'WARN', f'the inputs drift gradually along the {split} file: a '
                   f'straight line along the rows explains {trend[1]:.0%} of the rows\' '
                   f'{_what(trend[0])} within their classes (no abrupt block: the largest, '
                   f'{where}, is {abs(abrupt):.1f} standard deviations once the trend is '
                   'removed): a trend, data gathered over time or by source in order; a split '
                   'by position (the last rows as test) would test on the drifted end',
                   evidence, cause='input_trend', where={'split': split})
  return Verdict(check, 'PASS', f'no block of rows differs from the rest of the {split} file '
                 f'(largest: {where}, {abs(abrupt):.2f} standard deviations within their '
                 f'classes, block from {min_effect:g}) and no trend along the rows (R^2 '
                 f'{trend[1]:.2f}, from {min_trend:g})', evidence)


def _what(summary: str) -> str:
  return {'mean': 'mean', 'spread': 'spread', 'distance': 'distance from their class\'s mean '
          'input'}.get(summary, f'{summary} (a pattern over the features)')


def _how(x, y, residual, start: int, end: int, summary: str, effect: float) -> tuple:
  """(words for how the block's inputs differ, the features that differ most): their spread
  against the other rows', or their shift in units of the other rows' spread (floored at half
  the typical feature's, so a nearly constant pixel does not dominate)."""
  inside = np.zeros(len(y), bool)
  inside[start:end] = True
  spread_out = residual[~inside].std(0)
  floor = 0.5 * np.sqrt(np.mean(spread_out ** 2))
  # features nearly constant outside (a border pixel) have no spread to compare with
  ratio = np.where(spread_out >= floor, residual[inside].std(0) / np.maximum(spread_out, floor),
                   1.0)
  shift = (residual[inside].mean(0) - residual[~inside].mean(0)) / np.maximum(spread_out, floor)
  shape = np.shape(x)[1:]
  overall = float(np.median(ratio))
  if summary in ('spread', 'distance') or abs(np.log(overall)) > np.log(1.5):
    top = np.argsort(-np.abs(np.log(np.maximum(ratio, 1e-6))))[:3]
    what = (f'their inputs spread {overall:.2g}x as wide (most: features ' + ', '.join(
        f'{data_checks._position(int(f), shape)} {ratio[f]:.2g}x' for f in top) + ')')
  else:
    top = np.argsort(-np.abs(shift))[:3]
    direction = 'up' if effect > 0 else 'down'
    what = (('their inputs are shifted ' + direction) if summary == 'mean' else
            'their inputs follow another pattern') + ' (most: features ' + ', '.join(
        f'{data_checks._position(int(f), shape)} {shift[f]:+.1f} std' for f in top) + ')'
  return what, [int(f) for f in top]
