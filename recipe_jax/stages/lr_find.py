"""stage='lr_find': an exponential learning-rate range test (recipe step 3).

From the same initial state, batch order, augmentation and loss as training, the learning rate
grows exponentially from `lr_find.min_lr` to `lr_find.max_lr` over `lr_find.steps` steps while
the loss is recorded.
Nothing is saved to the run's checkpoints, so later training starts exactly as without it.

The rule, stated in lr_find/curves.json and the verdict's evidence: smooth the loss (bias-corrected exponential moving average),
cut the curve where it diverges (above `stop_factor` x its minimum so far, or non-finite), and
suggest the learning rate of steepest descent of the smoothed loss against log(lr) before its
minimum. Repeated for `lr_find.seeds` seeds (init and batch order change); the suggestion is
their median in log space, with the spread reported.
"""
import json
import os

import numpy as np
import optax
from absl import logging

from recipe_jax import files
from recipe_jax.engine import experiment, loop
from recipe_jax.runs import side_by_side
from recipe_jax.report import plots, results as report
from recipe_jax.verdicts import StageResult, Verdict

RULE = ('steepest descent of the EMA-smoothed loss against log(lr), before the smoothed '
        'minimum, on the curve cut where the smoothed loss exceeds stop_factor x its running '
        'minimum; median over seeds in log space')


def smoothed(losses_, beta: float) -> np.ndarray:
  """Bias-corrected exponential moving average (the first values are not pulled to 0)."""
  average, out = 0.0, []
  for i, loss in enumerate(losses_):
    average = beta * average + (1 - beta) * loss
    out.append(average / (1 - beta ** (i + 1)))
  return np.array(out)


def suggest(lrs, losses_, beta: float = 0.9, stop_factor: float = 4.0) -> dict:
  """The steepest-descent learning rate of one range-test curve (see the module docstring)."""
  lrs, smooth = np.asarray(lrs, np.float64), smoothed(np.asarray(losses_, np.float64), beta)
  running_min = np.minimum.accumulate(np.where(np.isfinite(smooth), smooth, np.inf))
  diverged = np.flatnonzero(~np.isfinite(smooth) | (smooth > stop_factor * running_min))
  end = int(diverged[0]) if len(diverged) else len(lrs)
  lowest = int(np.argmin(smooth[:end]))
  # A centred difference over a window damps the remaining batch-to-batch noise.
  window = max(1, end // 20)
  log_lr = np.log(lrs)
  slopes = np.full(end, np.inf)
  for i in range(window, min(lowest, end - window - 1) + 1):
    slopes[i] = ((smooth[i + window] - smooth[i - window]) /
                 (log_lr[i + window] - log_lr[i - window]))
  steepest = int(np.argmin(slopes)) if np.isfinite(slopes).any() else lowest // 2
  return {'suggestion': float(lrs[steepest]), 'min_loss_lr': float(lrs[lowest]),
          'diverged_at_lr': float(lrs[end]) if end < len(lrs) else None,
          'smoothed_loss': smooth}


def _loss_curves(exp, seeds: list, steps: int):
  """Each seed's training loss at every step: side by side where that is on, else one seed
  after another (a generator: a Ctrl-C keeps the seeds done)."""
  x, y = exp.dataset.x_train, exp.dataset.y_train
  if len(seeds) > 1 and side_by_side.enabled(exp.config):
    return list(side_by_side.run_steps(exp, x, y, steps, seeds)['loss'])
  return (exp.run_steps(x, y, steps, seed=seed)[1]['loss'] for seed in seeds)


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'lr_find')
  files.makedirs(out)
  cfg = config.lr_find
  schedule = optax.exponential_decay(cfg.min_lr, cfg.steps - 1, cfg.max_lr / cfg.min_lr)
  exp = experiment.build(config, num_train_steps=cfg.steps, schedule=schedule)
  lrs = np.array([float(schedule(i)) for i in range(cfg.steps)])
  curves, seeds = [], list(range(config.seed, config.seed + cfg.seeds))
  try:
    for seed, losses in zip(seeds, _loss_curves(exp, seeds, cfg.steps)):
      found = suggest(lrs, losses, cfg.smoothing, cfg.stop_factor)
      curves.append({'seed': seed, 'losses': losses, **found})
      logging.info('lr_find seed %d: suggestion %.3g (min loss at %.3g)', seed,
                   found['suggestion'], found['min_loss_lr'])
  except KeyboardInterrupt:
    loop.interrupted()
    if not curves:
      return report.finish(workdir, StageResult('lr_find', [], {}, [], finished=False), '')
  finished = len(curves) == len(seeds)  # else the seeds done so far are saved, and redone
  suggestions = np.array([c['suggestion'] for c in curves])
  curve_data = {
      'suggestion': float(np.exp(np.median(np.log(suggestions)))),
      'rule': RULE,
      'stop_factor': cfg.stop_factor,
      'spread_factor': float(suggestions.max() / suggestions.min()),
      'optimizer': config.optimizer.name,
      'lrs': lrs.tolist(),
      'per_seed': [{k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
                    for k, v in c.items()} for c in curves],
  }
  files.write_text(os.path.join(out, 'curves.json'), json.dumps(curve_data, indent=2))
  plots.lr_range(os.path.join(out, 'lr_find.png'), lrs, curves, curve_data['suggestion'],
                 cfg.stop_factor)
  metrics = {k: curve_data[k] for k in ('suggestion', 'spread_factor', 'optimizer')}
  return report.finish(workdir, StageResult(
      'lr_find', [verdict(curve_data, cfg.max_spread_factor)], metrics,
      ['lr_find/lr_find.png', 'lr_find/curves.json', 'lr_find/report.md'], finished=finished),
      f'LR range test: {config.model.name} with {config.optimizer.name}',
      {'learning_rate': [os.path.join(out, 'lr_find.png')]})


def verdict(curve_data: dict, max_spread: float) -> Verdict:
  """PASS with the suggestion; WARN when the seeds disagree by more than `max_spread`x (the
  curve is too noisy to trust: more steps or a larger batch) or no seed's curve diverged
  (max_lr too small to see where the loss explodes)."""
  suggestion, spread = curve_data['suggestion'], curve_data['spread_factor']
  line = (f'suggested learning rate {suggestion:.3g} ({curve_data["optimizer"]}; seeds span a '
          f'factor of {spread:.2f}); try --config.optimizer.learning_rate={suggestion:.2g}')
  evidence = {**{k: curve_data[k] for k in ('suggestion', 'spread_factor', 'rule')},
              'max_spread': max_spread}
  evidence['per_seed'] = [{k: c[k] for k in ('seed', 'suggestion', 'min_loss_lr',
                                             'diverged_at_lr')} for c in curve_data['per_seed']]
  if spread > max_spread:
    return Verdict('learning_rate', 'WARN', f'{line}; the seeds disagree by more than '
                   f'{max_spread:g}x: use more lr_find.steps or a larger batch', evidence)
  if all(c['diverged_at_lr'] is None for c in curve_data['per_seed']):
    return Verdict('learning_rate', 'WARN', f'{line}; the smoothed loss never rose above '
                   f'{curve_data["stop_factor"]:g}x its running minimum, where this test says '
                   'it diverged: raise lr_find.max_lr to see where it does', evidence)
  return Verdict('learning_rate', 'PASS', line, evidence)
