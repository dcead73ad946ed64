"""Is more data worth it? A power law fitted to validation error against training examples.

error(n) = a * n^-b + c: `c` is the error more data of this kind cannot remove, `b` how fast the
rest falls. The fit's parameter covariance is sampled to give the uncertainty of the
extrapolated gains; a fit that misses its own points gets a WARN, not a confident number.
"""
import warnings

import numpy as np
from scipy import optimize

from recipe_jax.verdicts import Verdict


def power_law(n, a, b, c):
  return a * np.power(n, -b) + c


def fit(examples, errors, samples: int = 2000, seed: int = 0) -> dict | None:
  """Least-squares fit over every (n, error) point (all seeds); None when it fails.
  Returns {a, b, c, rms (of the per-n mean errors), gain_2x, gain_4x (median and 16-84%
  range of the accuracy gained by 2x / 4x the largest n)}."""
  n, err = np.asarray(examples, np.float64), np.asarray(errors, np.float64)
  c0 = max(err.min() / 2, 0.0)
  b0 = 0.5
  a0 = max(err.max() - c0, 1e-3) * n.min() ** b0
  try:
    with warnings.catch_warnings():  # an inestimable covariance is handled in _draws
      warnings.simplefilter('ignore', optimize.OptimizeWarning)
      params, cov = optimize.curve_fit(power_law, n, err, p0=(a0, b0, c0),
                                       bounds=([0, 0, 0], [np.inf, 3, 1]), maxfev=20000)
  except (RuntimeError, ValueError):
    return None
  sizes = np.unique(n)
  means = np.array([err[n == s].mean() for s in sizes])
  rms = float(np.sqrt(np.mean((power_law(sizes, *params) - means) ** 2)))
  draws = _draws(params, cov, samples, seed)
  largest = sizes.max()
  found = {'a': float(params[0]), 'b': float(params[1]), 'c': float(params[2]), 'rms': rms,
           'largest_n': float(largest),
           # False when the fit's covariance is not finite (no more points than parameters,
           # or a degenerate fit): its gains then have no uncertainty to trust
           'uncertainty_known': bool(np.all(np.isfinite(cov))),
           # what the last step of the measured curve gained (accuracy), e.g. 1/2 -> all
           'last_step_gain': float(means[-2] - means[-1]) if len(sizes) > 1 else 0.0}
  for factor in (2, 4):
    gains = power_law(largest, *draws.T) - power_law(factor * largest, *draws.T)
    gain = float(power_law(largest, *params) - power_law(factor * largest, *params))
    found[f'gain_{factor}x'] = gain
    found[f'gain_{factor}x_range'] = [min(float(np.percentile(gains, 16)), gain),
                                      max(float(np.percentile(gains, 84)), gain)]
  return found


def _draws(params, cov, samples: int, seed: int) -> np.ndarray:
  """Parameter samples from the fit's covariance (clipped to the bounds); the point estimate
  alone when the covariance is not finite (the verdict then WARNs: `uncertainty_known`)."""
  if not np.all(np.isfinite(cov)):
    return np.asarray(params)[None]
  draws = np.random.default_rng(seed).multivariate_normal(params, cov, samples,
                                                          check_valid='ignore')
  return np.clip(draws, [0, 0, 0], [np.inf, 3, 1])


def verdict(found: dict | None, cfg) -> Verdict:
  """`more_data`: what doubling the data would gain, or that the curve has flattened; WARN
  when the fit is poor or too uncertain to give a number."""
  if found is None:
    return Verdict('more_data', 'WARN', 'the power law could not be fitted to the learning '
                   'curve; look at learning_curve.png', {})
  gain, (low, high) = found['gain_2x'], found['gain_2x_range']
  words = (f"doubling the data would gain about {gain:.1%} accuracy (68% range {low:.1%} to "
           f"{high:.1%}); 4x: {found['gain_4x']:.1%}. Fit: error = {found['a']:.3g} n^-"
           f"{found['b']:.2f} + {found['c']:.3f}")
  if found['rms'] > cfg.max_fit_rms:
    return Verdict('more_data', 'WARN', f"the power law misses its points by {found['rms']:.3f} "
                   f'(RMS, > {cfg.max_fit_rms:g}): no confident extrapolation; add seeds or '
                   'fractions', found)
  if not found.get('uncertainty_known', True):
    return Verdict('more_data', 'WARN', f"{words}; but the fit's uncertainty cannot be "
                   'estimated (no more points than the 3 parameters of the power law, or a '
                   'degenerate fit): no confident extrapolation; add seeds or fractions', found)
  if high < cfg.flat_gain:
    flat = (f'the fitted curve has flattened: doubling the data would gain at most {high:.1%} '
            f"(error floor c = {found['c']:.3f})")
    if found['last_step_gain'] > 2 * cfg.flat_gain:
      return Verdict('more_data', 'WARN', f"{flat}, but the last measured step still gained "
                     f"{found['last_step_gain']:.1%}: the points cannot tell yet; add seeds, or "
                     'measure with more data before deciding', found)
    return Verdict('more_data', 'PASS', f'{flat}; more data of this kind will not help much, '
                   'look at the model or the labels', {**found, 'flattened': True})
  if high - low > max(cfg.max_gain_range, abs(gain)):
    return Verdict('more_data', 'WARN', words + ': too uncertain to plan on; add seeds or '
                   'fractions', found)
  return Verdict('more_data', 'PASS', words, found)
