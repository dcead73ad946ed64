"""Do the trends seen at a small scale hold at a larger one? ("Scale up 10x ... observe if the
trends and rules observed at the smaller scale still hold.") The scale_up stage's verdict.

A conclusion is a pair of groups (compare's variants, or tune's trials) whose difference was
beyond the noise at the small scale. At the larger scale it holds (the same sign, beyond the
noise), fades (inside the noise) or flips (the other sign, beyond the noise). Spearman's rank
correlation of the groups' means says whether the order as a whole holds.
"""
import itertools

import numpy as np
from scipy import stats

from recipe_jax.config import selection
from recipe_jax import words
from recipe_jax.verdicts import Verdict

HOLDS, FADES, FLIPS = 'holds', 'fades', 'flips'


def conclusions(small: dict, large: dict, difference) -> list:
  """[{better, worse, small: difference, large: difference, fate}] for every pair of groups
  told apart beyond noise at the small scale. `difference(base, other)` -> {'delta', 'noise',
  'noise_level'} of two lists of runs (compare.difference)."""
  found = []
  for a, b in itertools.combinations(small, 2):
    before = difference(small[a], small[b])
    if before['noise'] != 'beyond noise':
      continue
    after = difference(large[a], large[b])
    fate = (FADES if after['noise'] != 'beyond noise' else
            HOLDS if np.sign(after['delta']) == np.sign(before['delta']) else FLIPS)
    found.append({'a': a, 'b': b, 'small': before, 'large': after, 'fate': fate})
  return found


def rank_correlation(small_means: list, large_means: list) -> float | None:
  """Spearman's rho of the groups' means at both scales (None for fewer than 3 groups, or a
  scale where every group has the same mean)."""
  if (len(small_means) < 3 or not np.all(np.isfinite(small_means + large_means)) or
      np.ptp(small_means) == 0 or np.ptp(large_means) == 0):
    return None
  return float(stats.spearmanr(small_means, large_means).statistic)


def _pair_words(c: dict, metric: str) -> str:
  """'narrow4 beat baseline by 0.296 ... at the small scale; at the larger it loses by 0.095
  (beyond the noise, +-0.031)'."""
  sign = selection.sign(metric)
  winner, loser = (c['b'], c['a']) if sign * c['small']['delta'] > 0 else (c['a'], c['b'])
  gap = abs(c['small']['delta'])
  after = c['large']
  moved = {FLIPS: f'it loses by {abs(after["delta"]):.4f} (beyond the noise, '
                  f'+-{after["noise_level"]:.4f})',
           FADES: f'the two differ by {abs(after["delta"]):.4f}, inside the noise '
                  f'(+-{after["noise_level"]:.4f})',
           HOLDS: f'it still wins, by {abs(after["delta"]):.4f}'}[c['fate']]
  return (f'{winner} beat {loser} by {gap:.4f} in {words.metric_name(metric)} at the small '
          f'scale; at the larger {moved}')


def verdict(groups: list, small_means: list, large_means: list, found: list, metric: str,
            scale: str, min_rho: float, diverged: dict | None = None) -> Verdict:
  """WARN when a group diverged at the larger scale (`diverged`: group -> error; the others
  are compared without it), a conclusion flips, the ranking's correlation is below `min_rho`,
  there was no conclusion to check, or every conclusion faded into the noise; PASS with what
  held (and what faded) otherwise. The verdict's cause says which."""
  status, said, cause, evidence = _conclusion(groups, small_means, large_means, found, metric,
                                              scale, min_rho)
  if not diverged:
    return Verdict('trends_hold', status, said, evidence, cause=cause)
  return Verdict('trends_hold', 'WARN', f'{", ".join(diverged)} diverged at the larger scale '
                 f'({next(iter(diverged.values()))}); of the others: {said}',
                 {**evidence, 'of_the_others': cause, 'diverged': diverged},
                 cause='run_diverged', where=list(diverged))


def _conclusion(groups, small_means, large_means, found, metric, scale, min_rho):
  """(status, sentence, cause, evidence) of the groups that did not diverge."""
  rho = rank_correlation(small_means, large_means)
  flips = [c for c in found if c['fate'] == FLIPS]
  fades = [c for c in found if c['fate'] == FADES]
  order = lambda means: ' > '.join(g for _, g in sorted(
      zip(means, groups), key=lambda t: -selection.sign(metric) * t[0]))
  rank_words = (f'Spearman {rho:+.2f} over {len(groups)} groups' if rho is not None else
                f'{len(groups)} groups: too few (or too equal) for a rank correlation')
  evidence = {'groups': groups, 'small_means': small_means, 'large_means': large_means,
              'spearman': rho, 'scale': scale, 'conclusions': found,
              'small_order': order(small_means), 'large_order': order(large_means),
              'flips': len(flips), 'fades': len(fades),
              'holds': len(found) - len(flips) - len(fades)}
  cause = ('trends_flip' if flips else 'trends_ranking' if rho is not None and rho < min_rho else
           'nothing_to_check' if not found and rho is None else
           'trends_all_faded' if found and len(fades) == len(found) else None)
  if cause in ('trends_flip', 'trends_ranking'):
    head = (f'{len(flips)} of {len(found)} conclusions flip at the larger scale ({scale})'
            if flips else f'the ranking does not hold at the larger scale ({scale})')
    detail = '; '.join(_pair_words(c, metric) for c in flips[:3])
    return ('WARN', f'{head}: {rank_words} (small: {order(small_means)}; larger: '
            f'{order(large_means)})' + (f'. {detail}' if detail else '') +
            '. Choose at the scale you will train at, or rerun compare there', cause, evidence)
  if cause == 'nothing_to_check':
    return ('WARN', f'nothing to check at the larger scale ({scale}): no difference was beyond '
            f'the noise at the small scale and {rank_words} (larger: {order(large_means)}); '
            'more seeds per group (compare.seeds) or more groups would tell', cause, evidence)
  if cause == 'trends_all_faded':
    detail = '; '.join(_pair_words(c, metric) for c in fades[:3])
    return ('WARN', f'none of the {len(found)} small-scale conclusions holds at the larger '
            f'scale ({scale}): each fades into the noise. {detail}. {rank_words} (larger: '
            f'{order(large_means)}). What was decided at the small scale is not decided at this '
            'one', cause, evidence)
  if not found:
    held = ('no difference was beyond the noise at the small scale, so no conclusion to '
            'check; ')
  else:
    held = (f'{len(found) - len(fades)} of {len(found)} conclusions hold'
            + (f', {len(fades)} fade into the noise' if fades else '') + '; ')
  return ('PASS', f'the small-scale trends hold at the larger scale ({scale}): {held}'
          f'{rank_words} (larger: {order(large_means)})', None, evidence)
