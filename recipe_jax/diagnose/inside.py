"""Verdicts from inside the net: each names the layer, the measurement and the likely reason.

They read `probes.measure` taken on one batch at init and after sanity's short run (`at_init`,
`after`; either may be None), with `order` the kernel layers in call order. AUTOTRAINER's and
DeepDiagnosis's conditions: vanishing and exploding gradients, dead ReLUs, saturated
sigmoid/tanh units, and symmetric (constant or zero) init.
"""
import numpy as np

from recipe_jax.diagnose import probes
from recipe_jax.report.results import Verdict


def _norms(measured, order, key):
  return np.array([float(measured[key][layer]) for layer in order])


def gradient_flow(at_init: dict, after: dict | None, order: list[str], max_ratio: float,
                  max_relative: float) -> Verdict:
  """Whether the gradient reaches the first layers, from each layer's kernel gradient norm.

  Vanishing: the first layer's gradient is more than `max_ratio` times smaller than the
  last's. Exploding: more than `max_ratio` times larger, or a layer's gradient more than
  `max_relative` times the norm of the weights it updates (activations that grow layer after
  layer inflate the last layers' gradients). Either must hold at init and still after the short
  run: a gradient zero at init only (behind a zero-initialised scale) does not count."""
  evidence = {'layers': order, 'max_ratio': max_ratio, 'max_relative': max_relative}
  if len(order) < 2:
    return Verdict('gradient_flow', 'PASS', f'one layer with a kernel ({order[0] if order else "none"}):'
                   ' no gradient to follow through layers', evidence)
  ratios, relatives = {}, {}
  for name, measured in (('init', at_init), ('after', after)):
    if measured is None:
      continue
    norms = _norms(measured, order, 'grad_norm')
    weights = _norms(measured, order, 'weight_norm')
    # a zero-initialised kernel has no scale to compare its gradient with
    relative = np.where(weights > 0, norms / np.maximum(weights, 1e-30), 0.0)
    evidence[f'grad_norm_{name}'], evidence[f'relative_{name}'] = norms, relative
    reached = np.flatnonzero(norms > 0)  # a layer with no gradient at all is cut off, not
    if len(reached) >= 2 and reached[-1] == len(order) - 1 and np.all(np.isfinite(norms)):
      ratios[name] = float(norms[reached[0]] / norms[-1])  # vanishing: `gradients` names it
      relatives[name] = float(relative.max())
  evidence['first_over_last'], evidence['max_relative_gradient'] = ratios, relatives
  if not ratios:
    return Verdict('gradient_flow', 'PASS', f'no gradient reaches the last layer ({order[-1]}) '
                   'to compare with: the gradients check and dead_units say why', evidence)
  which = 'after' if 'after' in ratios else 'init'
  norms, ratio = evidence[f'grad_norm_{which}'], ratios[which]
  first = int(np.flatnonzero(norms > 0)[0])
  steps = np.log10(np.maximum(norms[:-1], 1e-30)) - np.log10(np.maximum(norms[1:], 1e-30))
  steps[:first] = 0.0  # layers without any gradient are not part of a fall
  line = (f'gradient norm {norms[first]:.2g} at the first layer ({order[first]}) against '
          f'{norms[-1]:.2g} at the last ({order[-1]})')
  if all(r < 1 / max_ratio for r in ratios.values()):
    worst = int(np.argmin(steps))  # the steepest fall, going from the last layer back
    evidence['finding'] = f'{line}, {1 / ratio:.2g}x smaller over {len(order)} layers'
    return Verdict('gradient_flow', 'FAIL', f'vanishing gradients: {line}, {1 / ratio:.2g}x '
                   f'smaller over {len(order)} layers (steepest fall into {order[worst]}, '
                   f'{10 ** -steps[worst]:.2g}x per layer there). The first layers barely learn: '
                   'use ReLU-like activations, a normalisation layer, residual connections or a '
                   'variance-preserving init', evidence)
  grown = all(r > max_ratio for r in ratios.values())
  inflated = all(r > max_relative for r in relatives.values())
  if grown or inflated:
    relative = evidence[f'relative_{which}']
    worst = int(np.argmax(relative))
    what = (f'{ratio:.2g}x larger at the first layer than at the last' if grown else
            f'the gradient of {order[worst]} is {relative[worst]:.2g}x the norm of its weights '
            f'(at least {relative.min():.2g}x in every layer)')
    evidence['finding'] = what
    return Verdict('gradient_flow', 'FAIL', f'exploding gradients: {what} ({line}). Weights '
                   'initialised too large multiply activations and gradients at every layer: '
                   'use a variance-preserving init (He for ReLU, Glorot for tanh), a '
                   'normalisation layer, or clip gradients', evidence)
  return Verdict('gradient_flow', 'PASS', f'{line}: within {max_ratio:g}x, the gradient reaches '
                 f'the first layers; no layer\'s gradient exceeds {max_relative:g}x its weights',
                 evidence)


def _first_over(layers_in_order: list[str], fraction, threshold: float) -> str:
  """The first layer at or over the threshold (upstream damage explains what follows it), else
  the one nearest to it."""
  over = [layer for layer in layers_in_order if fraction(layer) >= threshold]
  return over[0] if over else max(layers_in_order, key=fraction)


DIED_DURING_RUN = 0.9


def dead_units(at_init: dict, after: dict | None, order: list[str], kinds: dict, params,
               learning_rate: float, max_fraction: float) -> Verdict:
  """ReLU units that output zero for every example of the batch. The layer named is the one
  whose units they are (the layer before the one they feed, when a ReLU of its output was
  matched element for element); the reason: dead at init already (a large negative bias or
  init), or killed during the short run (a learning rate too high)."""
  fed = [layer for layer in order if kinds.get(layer) in probes.RELU_LIKE]
  evidence = {'max_fraction': max_fraction, 'layers': {}}
  for layer in fed:
    row = {'init': float(at_init['activations'][layer]['input']['dead_fraction'])}
    if after is not None:
      row['after'] = float(after['activations'][layer]['input']['dead_fraction'])
    evidence['layers'][layer] = row
  if not fed:
    return Verdict('dead_units', 'PASS', 'no ReLU-like activations seen', evidence)
  # Dead at init counts when they stay dead (units that the short run revives were only quiet
  # on this batch); after the short run only a layer that lost nearly all its units counts:
  # Adam-trained ReLU nets commonly lose half and still learn.
  def stays_dead(row):
    return row['init'] >= max_fraction and row.get('after', row['init']) >= max_fraction

  def over(layer):
    row = evidence['layers'][layer]
    return max(row['init'] / max_fraction if stays_dead(row) else 0.0,
               row.get('after', 0.0) / DIED_DURING_RUN)

  worst = _first_over(fed, over, 1.0)
  row = evidence['layers'][worst]
  dead = max(row.values())
  source = probes.producer(order, worst) if kinds[worst] == 'relu' else None
  owner = f"{source}'s ReLU units" if source else f'the ReLU-like features entering {worst}'
  line = (f"{dead:.0%} of {owner} are dead (zero for every example of the batch): "
          f"{row['init']:.0%} at init" + (f", {row['after']:.0%} after the short run"
                                           if 'after' in row else ''))
  evidence.update(worst=worst, source=source, dead_at_init=stays_dead(row))
  if over(worst) < 1.0:
    return Verdict('dead_units', 'PASS', f'at most {dead:.0%} dead ReLU units in a layer '
                   f'({worst}; FAIL from {max_fraction:.0%} at init and after, WARN from '
                   f'{DIED_DURING_RUN:.0%} after the short run)', evidence)
  if stays_dead(row):
    why = 'they are dead from the start'
    bias = _bias(params, source) if source else None
    if bias is not None:
      spread = float(at_init['activations'][source]['output']['std'])
      evidence.update(bias_mean=bias, preactivation_std=spread)
      if bias < -spread:
        evidence['negative_bias'] = True
        why = (f"{source}'s biases average {bias:.3g} against a pre-activation spread of "
               f'{spread:.3g}: a large negative bias switches them off; initialise biases at 0')
      else:
        why += ' (a bad init, or inputs far from zero mean)'
  else:
    why = (f'they died during the short run: a learning rate too high ({learning_rate:g}) '
           'pushes ReLUs into the zero region for good; try 3-10x lower, or a leaky ReLU')
  evidence['finding'] = f'{line}; {why if stays_dead(row) else why.split(": ")[0]}'
  status = 'FAIL' if evidence['dead_at_init'] else 'WARN'
  return Verdict('dead_units', status, f'dying ReLU: {line}; {why}', evidence)


def _bias(params, layer: str):
  own = probes.leaf(params, layer)
  return float(np.mean(own['bias'])) if 'bias' in own else None


def saturation(at_init: dict, after: dict | None, order: list[str], kinds: dict,
               max_fraction: float) -> Verdict:
  """Sigmoid or tanh outputs pinned where their slope is under a few percent of its peak
  (sigmoid < 0.01 or > 0.99, tanh beyond +-0.99): the gradient through them vanishes."""
  squashed = [layer for layer in order
              if kinds.get(layer) in probes.SIGMOID_LIKE + probes.TANH_LIKE]
  evidence = {'max_fraction': max_fraction, 'layers': {}}
  for layer in squashed:
    kind = kinds[layer]
    row = {'kind': kind, 'init': float(probes.saturated_fraction(
        at_init['activations'][layer]['input'], kind))}
    if after is not None:
      row['after'] = float(probes.saturated_fraction(after['activations'][layer]['input'], kind))
    evidence['layers'][layer] = row
  if not squashed:
    return Verdict('saturation', 'PASS', 'no sigmoid- or tanh-like activations seen', evidence)
  fraction = lambda layer: max(v for k, v in evidence['layers'][layer].items() if k != 'kind')
  worst = _first_over(squashed, fraction, max_fraction)
  row, saturated = evidence['layers'][worst], fraction(worst)
  source = probes.producer(order, worst) if row['kind'] in ('sigmoid', 'tanh') else None
  kind = row['kind'].replace('-like', '')
  owner = f"{source}'s {kind} outputs" if source else f'the {kind}-like values entering {worst}'
  evidence['worst'] = worst
  line = f'{saturated:.0%} of {owner} are saturated'
  if saturated < max_fraction:
    return Verdict('saturation', 'PASS', f'{line}, the most in any layer (FAIL from '
                   f'{max_fraction:.0%})', evidence)
  spread = ''
  if source:
    spread = (f', its pre-activations spreading '
              f'{float(at_init["activations"][source]["output"]["std"]):.3g}')
  evidence['finding'] = f'{line}{spread}'
  return Verdict('saturation', 'FAIL', f'saturated units: {line}{spread}, where the slope is '
                 'under a few percent of its peak, so almost no gradient passes: initialise the '
                 'weights smaller (Xavier/Glorot for sigmoid and tanh), standardise the inputs, '
                 'or use ReLU-like activations', evidence)


def symmetric_init(params, order: list[str], max_fraction: float) -> Verdict:
  """Hidden units that are copies of each other, in incoming and outgoing weights (constant
  init): they get the same gradient and stay copies, so the layer is as narrow as its distinct
  units. `order`: the kernel layers in call order; the last (the logits) is exempt, as each
  class's gradient differs by its labels."""
  evidence = {'max_fraction': max_fraction, 'layers': {}}
  for layer, consumer in zip(order[:-1], order[1:]):
    found = probes.symmetric_units(params, layer, consumer)
    if found['units'] > 1:
      evidence['layers'][layer] = found
  copied = {k: v for k, v in evidence['layers'].items() if v['copied_fraction'] >= max_fraction}
  if not copied:
    return Verdict('symmetric_init', 'PASS', f'no hidden layer starts with copied units '
                   f'({len(evidence["layers"])} checked)', evidence)
  layer, found = next(iter(copied.items()))
  how = 'all zero' if found['all_zero'] else 'identical'
  others = f' (and {", ".join(list(copied)[1:4])})' if len(copied) > 1 else ''
  evidence['finding'] = (f"{found['copied_fraction']:.0%} of {layer}'s {found['units']} units "
                         f'start with {how} incoming weights{others}')
  return Verdict('symmetric_init', 'FAIL', f'symmetric init: {found["copied_fraction"]:.0%} of '
                 f"{layer}'s {found['units']} units start with {how} incoming weights, "
                 f"{found['groups']} distinct unit(s){others}; identical units get identical "
                 'gradients and stay copies: use a random init (the framework default)',
                 evidence)


def update_ratios(series: dict) -> dict:
  """The median per-step update-to-weight ratio of each layer over the short run (cs231n's
  rule of thumb: about 1e-3)."""
  return {layer: float(np.median(values)) for layer, values in series.items() if len(values)}


def activations_seen(order: list[str], unseen: list[str]) -> Verdict:
  """Which layers' activations the probes saw. Layers inside a loop (nn.scan, lax.scan: an
  RNN's cell) or a custom op are not recorded: dead_units and saturation do not cover them,
  though their gradients are still followed."""
  evidence = {'seen': order, 'not_seen': unseen}
  if unseen:
    listed = ', '.join(unseen[:4]) + (f' and {len(unseen) - 4} more' if len(unseen) > 4 else '')
    return Verdict('activations_seen', 'WARN', f'the activations of {len(unseen)} of '
                   f'{len(order) + len(unseen)} layers were not seen: {listed} (inside a loop '
                   'such as nn.scan, or a custom op); dead_units and saturation cover only the '
                   f'other {len(order)}, gradient_flow covers all', evidence)
  if not order:
    return Verdict('activations_seen', 'PASS', 'no layer with a kernel to look inside', evidence)
  return Verdict('activations_seen', 'PASS', f'the activations of all {len(order)} layers were '
                 f'seen, {order[0]} to {order[-1]}', evidence)
