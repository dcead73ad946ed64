"""Verdicts from inside the net: each names the layer, the measurement and the likely reason.

They read `probes.measure` taken on one batch at init and after sanity's short run (`at_init`,
`after`; either may be None), with `order` the kernel layers in call order. AUTOTRAINER's and
DeepDiagnosis's conditions: vanishing and exploding gradients, dead ReLUs, saturated
sigmoid/tanh units, and symmetric (constant or zero) init.
"""
import numpy as np

from recipe_jax.diagnose import probes
from recipe_jax.verdicts import Verdict


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
                   'variance-preserving init', evidence, cause='vanishing_gradients',
                   where=[order[worst]])
  grown = all(r > max_ratio for r in ratios.values())
  inflated = all(r > max_relative for r in relatives.values())
  if grown or inflated:
    relative = evidence[f'relative_{which}']
    worst = int(np.argmax(relative))
    over = [order[i] for i in np.flatnonzero(relative > max_relative)]
    evidence['layers_over'] = over
    if grown:
      what = f'{ratio:.2g}x larger at the first layer than at the last'
      why = ('weights initialised too large multiply the gradient at every layer on its way '
             'back')
    else:
      what = (f'the gradient of {order[worst]} is {relative[worst]:.2g}x the norm of its '
              f'weights (over {max_relative:g}x in {len(over)} of {len(order)} layers)')
      why = ('weights initialised too large multiply activations and gradients at every layer'
             if len(over) == len(order) else
             f'{", ".join(over[:3])}{"..." if len(over) > 3 else ""} get gradients far larger '
             'than their weights: weights initialised too small for their inputs, or '
             'activations that grew in the layers before')
    evidence['finding'] = what
    return Verdict('gradient_flow', 'FAIL', f'exploding gradients: {what} ({line}). The '
                   f'likely cause: {why}; use a variance-preserving init (He for ReLU, Glorot '
                   'for tanh), a normalisation layer, or clip gradients', evidence,
                   cause='exploding_gradients', where=over or [order[worst]])
  return Verdict('gradient_flow', 'PASS', f'{line}: within {max_ratio:g}x, the gradient reaches '
                 f'the first layers; no layer\'s gradient exceeds {max_relative:g}x its weights',
                 evidence)


def _first_over(names: list[str], fraction, threshold: float) -> str:
  """The first site at or over the threshold (upstream damage explains what follows it), else
  the one nearest to it."""
  over = [name for name in names if fraction(name) >= threshold]
  return over[0] if over else max(names, key=fraction)


DIED_DURING_RUN = 0.9


def _rows(sites, at_init, after, measured: str) -> dict:
  """{site name: {'init', 'after', 'share_init', 'share_after', ...}} for the judged sites."""
  rows = {}
  for site in sites:
    row = {'kind': site.kind, 'producer': site.producer}
    for when, found in (('init', at_init), ('after', after)):
      if found is not None and site.name in found.get('sites', {}):
        stats = found['sites'][site.name]
        row[when] = float(stats[measured])
        share = float(stats['gradient_share'])
        row[f'share_{when}'] = share if np.isfinite(share) else None
    if 'init' in row:
      rows[site.name] = row
  return rows


def _collapsed(row: dict, max_fraction: float, min_gradient_share: float) -> bool:
  """After the short run, at least `max_fraction` of the units dead or saturated and less than
  `min_gradient_share` of the gradient arriving at them passing."""
  share = row.get('share_after')
  return (row.get('after', 0.0) >= max_fraction and share is not None
          and share < min_gradient_share)


def _not_judged(check: str, program) -> Verdict | None:
  if program is None:
    return Verdict(check, 'PASS', "not judged: the model's program could not be read "
                   '(activations_seen says so)', {'judged': False})
  return None


def dead_units(program, at_init: dict, after: dict | None, params, learning_rate: float,
               max_fraction: float, min_gradient_share: float) -> Verdict:
  """ReLU units that output zero for every example of the batch, measured at each ReLU of the
  program (not at the next layer's input: pooling, dropout or a residual sum may sit between)
  and named by the layer whose units they are. FAIL: dead from the start (still dead after the
  short run), or dead after the short run with the gradient through them collapsed (less than
  `min_gradient_share` of what arrives passes). WARN: nearly all died during the run
  (`DIED_DURING_RUN`) while some gradient still passes."""
  skipped = _not_judged('dead_units', program)
  if skipped:
    return skipped
  rows = _rows(program.judged('dead'), at_init, after, 'dead_fraction')
  evidence = {'max_fraction': max_fraction, 'min_gradient_share': min_gradient_share,
              'layers': rows}
  if not rows:
    return Verdict('dead_units', 'PASS', 'no ReLU in the program', evidence)

  def stays_dead(row):
    return row['init'] >= max_fraction and row.get('after', row['init']) >= max_fraction

  collapsed = lambda row: _collapsed(row, max_fraction, min_gradient_share)

  def over(name):
    row = rows[name]
    return max(row['init'] / max_fraction if stays_dead(row) else 0.0,
               1.0 if collapsed(row) else 0.0, row.get('after', 0.0) / DIED_DURING_RUN)

  worst = _first_over(list(rows), over, 1.0)
  row = rows[worst]
  dead = max(row['init'], row.get('after', 0.0))
  owner = (f"{row['producer']}'s ReLU units" if row['producer'] else
           'the ReLU units applied to the input')
  line = (f"{dead:.0%} of {owner} are dead (zero for every example of the batch): "
          f"{row['init']:.0%} at init" + (f", {row['after']:.0%} after the short run"
                                           if 'after' in row else ''))
  evidence.update(worst=worst, source=row['producer'], dead_at_init=stays_dead(row))
  if over(worst) < 1.0:
    return Verdict('dead_units', 'PASS', f"the most dead ReLU units: {owner}, {row['init']:.0%} "
                   'at init' + (f", {row['after']:.0%} after the short run" if 'after' in row
                                else '') + f' (FAIL from {max_fraction:.0%} at init and still '
                   f'after, WARN from {DIED_DURING_RUN:.0%} after the short run)', evidence)
  share = row.get('share_after')
  passing = (f'; {share:.0%} of the gradient arriving at them passes' if share is not None
             else '')
  if stays_dead(row):
    why = 'they are dead from the start'
    bias = _bias(params, row['producer']) if row['producer'] else None
    if bias is not None:
      spread = float(at_init['sites'][worst]['preactivation_std'])
      evidence.update(bias_mean=bias, preactivation_std=spread)
      if bias < -spread:
        evidence['negative_bias'] = True
        why = (f"{row['producer']}'s biases average {bias:.3g} against a pre-activation spread "
               f'of {spread:.3g}: a large negative bias switches them off; initialise biases '
               'at 0')
      else:
        why += ' (a bad init, or inputs far from zero mean)'
    evidence['finding'] = f'{line}; {why}'
  else:
    died = f'they died during the short run{passing}'
    why = f'{died}: {died_because(learning_rate)}'
    evidence['finding'] = f'{line}; {died}'
  status = 'FAIL' if stays_dead(row) or collapsed(row) else 'WARN'
  return Verdict('dead_units', status, f'dying ReLU: {line}; {why}', evidence, cause='dying_relu',
                 where=[row['producer'] or worst])


def died_because(learning_rate: float) -> str:
  """What kills ReLU units during training, hedged: the run alone does not tell which."""
  return (f'the learning rate ({learning_rate:g}) may be too high for them (try 3-10x lower, '
          'or a leaky ReLU); inputs or biases that drift during training kill units too')


def _bias(params, layer: str):
  own = probes.leaf(params, layer)
  return float(np.mean(own['bias'])) if 'bias' in own else None


def saturation(program, at_init: dict, after: dict | None, max_fraction: float,
               min_gradient_share: float) -> Verdict:
  """Sigmoid, tanh or hard-tanh used as activations (not as gates, nor inside SiLU or GELU,
  read from the program), with their outputs pinned where the slope is under a few percent of
  its peak. FAIL at init from `max_fraction` saturated; after the short run only when the
  gradient through them has collapsed too (less than `min_gradient_share` of what arrives
  passes): a trained tanh net has many units at +-1 and still learns."""
  skipped = _not_judged('saturation', program)
  if skipped:
    return skipped
  rows = _rows(program.judged('saturation'), at_init, after, 'saturated_fraction')
  evidence = {'max_fraction': max_fraction, 'min_gradient_share': min_gradient_share,
              'layers': rows}
  if not rows:
    gates = sorted({s.kind for s in program.sites if s.kind in ('silu', 'gelu', 'sigmoid gate',
                                                                 'tanh gate', 'glu')})
    return Verdict('saturation', 'PASS', 'no sigmoid, tanh or hard-tanh used as an activation'
                   + (f' (not judged: {", ".join(gates)}, which multiply what they gate and do '
                      'not saturate)' if gates else ''), evidence)

  collapsed = lambda row: _collapsed(row, max_fraction, min_gradient_share)
  fraction = lambda name: max(rows[name]['init'] / max_fraction,
                              1.0 if collapsed(rows[name]) else 0.0)
  worst = _first_over(list(rows), fraction, 1.0)
  row = rows[worst]
  kind = row['kind'].replace('_', '-')
  owner = (f"{row['producer']}'s {kind} outputs" if row['producer'] else
           f'the {kind} outputs of the input')
  evidence['worst'] = worst
  spread = float(at_init['sites'][worst]['preactivation_std'])
  if row['init'] >= max_fraction:
    line = (f"{row['init']:.0%} of {owner} are saturated at init, its pre-activations "
            f'spreading {spread:.3g}')
    evidence['finding'] = line
    return Verdict('saturation', 'FAIL', f'saturated units: {line}, where the slope is under a '
                   'few percent of its peak, so almost no gradient passes: initialise the '
                   'weights smaller (Xavier/Glorot for sigmoid and tanh), standardise the '
                   'inputs, or use ReLU-like activations', evidence, cause='saturated_units',
                   where=[row['producer'] or worst])
  if collapsed(row):
    line = (f"{row['after']:.0%} of {owner} are saturated after the short run and only "
            f"{row['share_after']:.0%} of the gradient arriving at them passes (FAIL under "
            f'{min_gradient_share:.0%})')
    evidence['finding'] = line
    return Verdict('saturation', 'FAIL', f'saturated units: {line}: the layers before them '
                   'stop learning; lower the learning rate, normalise the pre-activations '
                   '(LayerNorm, BatchNorm), or use ReLU-like activations', evidence,
                   cause='saturated_units', where=[row['producer'] or worst])
  most = max(rows.values(), key=lambda r: max(r['init'], r.get('after', 0.0)))
  if most.get('after', 0.0) >= max_fraction:
    kind = most['kind'].replace('_', '-')
    owner = f"{most['producer']}'s" if most['producer'] else "the input's"
    passing = (f"{most['share_after']:.0%} of the gradient still passes them"
               if most.get('share_after') is not None else 'no gradient arrives at them')
    return Verdict('saturation', 'PASS', f"{most['after']:.0%} of {owner} {kind} outputs are "
                   f'saturated after the short run, but {passing}: a trained {kind} net (FAIL '
                   f'when under {min_gradient_share:.0%} passes, or from {max_fraction:.0%} '
                   'saturated at init)', evidence)
  worst_now = max(max(r['init'], r.get('after', 0.0)) for r in rows.values())
  return Verdict('saturation', 'PASS', f'at most {worst_now:.0%} of any layer\'s {kind} outputs '
                 f'saturated (FAIL from {max_fraction:.0%} at init)', evidence)


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
                 evidence, cause='symmetric_init', where=list(copied))


def update_ratios(series: dict) -> dict:
  """The median per-step update-to-weight ratio of each layer over the short run (cs231n's
  rule of thumb: about 1e-3)."""
  return {layer: float(np.median(values)) for layer, values in series.items() if len(values)}


def activations_seen(order: list[str], unseen: list[str], program=None) -> Verdict:
  """Which layers' activations the probes saw, and what made each layer's input, read from
  the program (`program.layer_inputs`). Layers inside a loop (nn.scan, lax.scan: an RNN's
  cell) or a custom op are not recorded: dead_units and saturation do not cover them, though
  their gradients are still followed."""
  inputs = program.layer_inputs if program is not None else {}
  evidence = {'seen': order, 'not_seen': unseen, 'layer_inputs': inputs,
              'program_read': program is not None}
  read = [layer for layer, d in inputs.items() if d['kind'] != 'input']
  named = [layer for layer in read if inputs[layer]['identified']]
  opaque = sorted({u for layer in read for u in inputs[layer]['unknown']})
  reading = (f"; the nonlinearity before {len(named)} of {len(read)} layers read from the "
             'program' + (f" (the rest pass {', '.join(opaque)}, which it cannot see into)"
                          if len(named) < len(read) else '') if read else '')
  if program is None and order:
    return Verdict('activations_seen', 'WARN', "the model's program could not be read (an "
                   'operation the reader does not know; the log file says which): dead_units '
                   'and saturation are not judged, gradient_flow still is', evidence)
  if unseen:
    listed = ', '.join(unseen[:4]) + (f' and {len(unseen) - 4} more' if len(unseen) > 4 else '')
    return Verdict('activations_seen', 'WARN', f'the activations of {len(unseen)} of '
                   f'{len(order) + len(unseen)} layers were not seen: {listed} (inside a loop '
                   'such as nn.scan, or a custom op); dead_units and saturation cover only the '
                   f'other {len(order)}, gradient_flow covers all{reading}', evidence)
  if not order:
    return Verdict('activations_seen', 'PASS', 'no layer with a kernel to look inside', evidence)
  return Verdict('activations_seen', 'PASS', f'the activations of all {len(order)} layers were '
                 f'seen, {order[0]} to {order[-1]}{reading}', evidence)
