"""Differential diagnosis: from the sanity checks' own measurements to the one cause the
evidence points to, with what it rules out.

The checks measure symptoms (the loss does not fall, one batch cannot be memorised, the model
does no better than with zeroed inputs) and causes (gradients that vanish, dead or saturated
units, copied units). `explain` reads them all, names the most likely cause (or says the
evidence is ambiguous), appends it to every failed symptom, and adds a `diagnosis` verdict, so
the report, the console and the recipe read one conclusion.
"""
import dataclasses

import numpy as np

from recipe_jax.causes import CAUSES
from recipe_jax.verdicts import Verdict

SYMPTOMS = ('dumb_baselines', 'decreasing_loss', 'overfit_one_batch')
HEALTHY_UPDATE_RATIO = 1e-3  # cs231n's rule of thumb for a step's update against the weights
TINY_UPDATE_RATIO = 1e-5  # 100x below it: the weights barely move


@dataclasses.dataclass
class Finding:
  code: str  # a cause of causes.CAUSES: 'vanishing_gradients'
  because: str  # the evidence, in words

  @property
  def cause(self) -> str:
    return CAUSES[self.code]


def _failed(verdicts, check):
  v = verdicts.get(check)
  return v is not None and v.status == 'FAIL'


def _passed(verdicts, check):
  v = verdicts.get(check)
  return v is not None and v.status == 'PASS'


def targets_differ(overfit: Verdict | None, signature: Verdict | None = None) -> Finding | None:
  """The loss itself is lowest at other classes than the labels (loss_signature), or on one
  batch it reaches the fitted level while accuracy stays low: the loss is minimised toward
  targets other than the labels accuracy counts."""
  if signature is not None and signature.cause == 'targets_differ':
    shift = signature.evidence['most_common_shift']
    moved = 1 - signature.evidence['lowest_at_labels']
    return Finding('targets_differ',
                   f'over free logits the loss is lowest at another class than the label for '
                   f'{moved:.0%} of the examples (the most common: label {shift:+d}): it trains '
                   'toward other targets (labels shifted or re-encoded inside the loss, e.g. '
                   'one_hot(labels - 1))')
  if overfit is None or 'losses' not in overfit.evidence or (
      signature is not None and signature.cause == 'loss_maximised'):
    return None  # a loss falling without bound is its sign, named before
  losses = np.asarray(overfit.evidence['losses'], np.float64)
  accuracies = np.asarray(overfit.evidence['accuracies'], np.float64)
  low = losses <= max(overfit.evidence['max_loss'], 0.02 * losses[0])
  if not np.any(low) or accuracies[low].max() >= 0.5:
    return None
  step = int(np.flatnonzero(low)[-1])
  return Finding('targets_differ',
                 f'on one batch the loss falls to {losses[step] + 0.0:.2g} while accuracy stays at '
                 f'{accuracies[step]:.0%}: the loss is minimised toward targets other than the '
                 'labels accuracy counts (labels shifted or re-encoded inside the loss, e.g. '
                 'one_hot(labels - 1), or targets taken from another column)')


SQUASHED_SPREAD = 5.0  # logits spread over at most this cannot take 10 classes' loss under 0.05


def squashed_logits(verdicts) -> Finding | None:
  """One batch is not memorised and the logits show why: their spread stays bounded (a
  softmax's or sigmoid's outputs spread over at most 1) and the loss went down to the floor
  such a spread allows and stays there; or no output bias adds to the logits at all. Not when
  the loss itself has a floor (loss_signature: soft targets), which explains a stall as well."""
  overfit = verdicts.get('overfit_one_batch')
  if overfit is None or overfit.status != 'FAIL' or 'losses' not in overfit.evidence:
    return None
  signature = verdicts.get('loss_signature')
  if signature is not None and signature.cause == 'loss_floor':
    return None
  init = verdicts.get('init_well')
  no_output_bias = (init is not None and init.status == 'FAIL' and
                    init.evidence.get('output_bias') is None and init.evidence.get('candidates'))
  spread, floor = overfit.evidence.get('logit_range'), overfit.evidence.get('squashed_floor')
  loss = overfit.evidence['final_loss']
  if overfit.evidence.get('eval_loss') is not None:
    loss = min(loss, overfit.evidence['eval_loss'])
  # the loss went down to that floor and stays there (a net whose logits never moved, at a
  # tiny learning rate, is far above it)
  start = float(overfit.evidence['losses'][0])
  bounded = (spread is not None and floor is not None and spread <= SQUASHED_SPREAD
             and 0.5 * floor <= loss <= 1.5 * floor and start - loss >= 0.5 * (start - floor))
  if not (bounded or no_output_bias):
    return None
  because = (f'after {len(overfit.evidence["losses"])} steps on one batch its logits spread '
             f'over at most {spread:.2g}, so the loss cannot fall below {floor:.3g}, and it '
             f'stalls at {loss:.3g}' if bounded else
             f'one batch stalls at loss {loss:.3g}')
  return Finding('logits_squashed', because +
                 (' and no output bias adds to the logits' if no_output_bias else '') +
                 ': something (a softmax or sigmoid) squashes the logits before a loss that '
                 'applies its own softmax')


def bad_inputs(inputs: Verdict | None) -> Finding | None:
  """The batch that enters the net is unusable (inputs_before_net's FAIL), named by its cause."""
  if inputs is None or inputs.status != 'FAIL' or inputs.cause is None:
    return None
  e = inputs.evidence
  because = {'inputs_non_finite': f"{e.get('non_finite')} NaN/Inf values in the batch that "
                                  'enters the net',
             'inputs_identical': 'every example of the batch that enters the net is identical',
             'inputs_unnormalised': f"the batch that enters the net is far from unit scale "
                                    f"(RMS {e.get('rms', float('nan')):.3g}): set "
                                    'dataset.normalize=True'}
  return Finding(inputs.cause, because[inputs.cause])


def examples_mixed(dependency: Verdict | None) -> Finding | None:
  """In eval mode an example's loss depends on another example's input (batch_dependency)."""
  if dependency is None or dependency.status != 'FAIL' or 'eval' not in dependency.evidence:
    return None
  pairs = dependency.evidence['eval']['mixed_pairs_loss_input']
  if not pairs:
    return None
  i, j = pairs[0]
  return Finding('examples_mixed',
                 f'in eval mode the loss of example {i} depends on the input of example {j} '
                 f'({len(pairs)} pairs seen): the model mixes examples (a mean over the batch '
                 'axis, a wrong reshape or transpose)')


def initial_logits_too_large(init: Verdict | None) -> Finding | None:
  """The loss at init far above what predicting the prior costs (loss_at_init's FAIL): the
  initial logits are huge, from a last layer or every layer initialised too large."""
  if init is None or init.status != 'FAIL' or not np.isfinite(init.evidence.get('mean', np.nan)) \
      or init.evidence.get('ratio', 0) < init.evidence.get('max_ratio', float('inf')):
    return None
  e = init.evidence
  return Finding('initial_logits_too_large',
                 f"the loss at init is {e['mean']:.3g}, {e['ratio']:.3g}x the {e['expected']:.3g} "
                 'that predicting the class prior costs: the net starts overconfident, from a '
                 'last layer (or every layer) initialised too large')


def learning_rate(verdicts, sweep: dict | None, update_ratio: float | None,
                  configured: float) -> Finding | None:
  """Too small: the weights barely move (update ratio far under 1e-3) or a larger rate fits the
  batch the configured one cannot; too large: only a smaller one does, or the loss rises."""
  if not (_failed(verdicts, 'decreasing_loss') or _failed(verdicts, 'overfit_one_batch')):
    return None
  overfit = verdicts.get('overfit_one_batch')
  own = overfit.evidence.get('final_loss') if overfit is not None else None
  # a rate fits one batch, or takes its loss under half of what the configured rate reaches
  better = sorted(f for f, r in (sweep or {}).items() if r['fitted'] or (
      own is not None and np.isfinite(r['final_loss']) and r['final_loss'] < 0.5 * own))
  larger, smaller = [f for f in better if f > 1], [f for f in better if f < 1]
  flowing = _passed(verdicts, 'gradient_flow') and _passed(verdicts, 'gradients')
  # weights that stopped because the units feeding them died (a rate far too high kills
  # ReLUs) do not move for want of gradient: that is no small rate
  dead = verdicts.get('dead_units')
  died = dead is not None and dead.status != 'PASS' and not dead.evidence.get('dead_at_init',
                                                                               True)
  tiny = (update_ratio is not None and 0 < update_ratio < TINY_UPDATE_RATIO and flowing
          and not died)
  if tiny or larger and not smaller:
    parts = []
    if tiny:
      parts.append(f'each step moves the weights by {update_ratio:.1g} of their size (healthy: '
                   f'about {HEALTHY_UPDATE_RATIO:g}) though gradients reach every layer')
    if larger:
      parts.append(_rate_words(sweep, larger[-1], configured, own))
    return Finding('lr_too_low', '; '.join(parts) +
                   f': raise optimizer.learning_rate (run lr_find)')
  rising = verdicts.get('decreasing_loss')
  rose = rising is not None and rising.evidence.get('relative_drop', 0) < 0
  if smaller or rose:
    parts = ([f'the loss rose {-rising.evidence["relative_drop"]:.0%} over the short run']
             if rose else [])
    if smaller:
      parts.append(_rate_words(sweep, smaller[-1], configured, own))
    return Finding('lr_too_high', '; '.join(parts) +
                   ': lower optimizer.learning_rate (run lr_find)')
  return None


def _rate_words(sweep: dict, factor: float, configured: float, own: float | None) -> str:
  found = sweep[factor]
  if found['fitted']:
    return f'{factor:g}x the rate memorises one batch that {configured:g} cannot'
  return (f"at {factor:g}x the rate one batch's loss falls to {found['final_loss']:.3g}, against "
          f'{own:.3g} at {configured:g}')


def labels_not_with_inputs(verdicts) -> Finding | None:
  """The net can memorise one batch but on validation does no better than the same net on
  zeroed inputs: what it fits does not carry from inputs to labels. (A falling training loss
  alone does not count: a net whose first layers learn nothing still learns the class prior.)"""
  if not _failed(verdicts, 'dumb_baselines') or not _passed(verdicts, 'overfit_one_batch'):
    return None
  return Finding('labels_not_with_inputs',
                 'it memorises one batch, yet on validation it does no better than the same net on zeroed '
                 'inputs: the labels do not follow the inputs (shuffled or misaligned after a '
                 'sort or filter, or read from another file)')


def inputs_detached(verdicts) -> Finding | None:
  dependency, gradients = verdicts.get('batch_dependency'), verdicts.get('gradients')
  dead = []
  if dependency is not None and 'train' in dependency.evidence:
    dead = dependency.evidence['train'].get('examples_not_depending_on_own_input', [])
  zero = gradients.evidence.get('zero_gradient', []) if gradients is not None else []
  if dead:
    cut = f'; {", ".join(zero[:3])} get no gradient' if zero else ''
    return Finding('inputs_detached',
                   f'the losses of examples {list(dead)[:5]} do not depend on their own input'
                   f'{cut} (a layer detached, multiplied by zero, or the input replaced)')
  if zero:
    return Finding('layers_cut_off', f'parameters {", ".join(zero[:3])} get no '
                   'gradient after the short run either: their output never reaches the loss')
  return None


def _from_check(verdicts, check, code, statuses=('FAIL',)) -> Finding | None:
  v = verdicts.get(check)
  if v is None or v.status not in statuses or 'error' in v.evidence:  # crashed: no evidence
    return None
  return Finding(code, v.evidence.get('finding') or f'see {check}')


def targets_from_other_examples(signature: Verdict | None) -> Finding | None:
  """The loss itself scores each example against another example's label (loss_signature:
  reordered, the classes it is lowest at move with the positions)."""
  if signature is None or signature.cause != 'targets_from_other_examples':
    return None
  moved = 1 - signature.evidence['targets_kept_when_reordered']
  return Finding('targets_from_other_examples',
                 f"reordered, {moved:.0%} of the batch's examples are scored against other "
                 'classes: the loss pairs each example with another example\'s label (labels '
                 'rolled, shuffled or sorted inside the loss)')


def loss_maximised(signature: Verdict | None) -> Finding | None:
  """The loss falls without bound as the logits grow (loss_signature): its sign is flipped."""
  if signature is None or signature.cause != 'loss_maximised':
    return None
  return Finding('loss_maximised',
                 f"over free logits the loss falls to {signature.evidence['floor']:.3g} and "
                 'on, where cross-entropy stops at 0: training climbs the cross-entropy')


def not_a_function_of_inputs(verdicts, sweep: dict | None) -> Finding | None:
  """One fixed batch is not memorised at any rate tried, the loss staying near where it
  started, while gradients reach every layer and every loss depends on its input: the targets
  the loss sees change from one pass over the batch to the next."""
  overfit = verdicts.get('overfit_one_batch')
  if overfit is None or overfit.status != 'FAIL' or 'losses' not in overfit.evidence:
    return None
  if not sweep or any(r['fitted'] for r in sweep.values()):
    return None
  if not (_passed(verdicts, 'gradient_flow') and _passed(verdicts, 'gradients')):
    return None
  signature = verdicts.get('loss_signature')
  if signature is not None and signature.cause in (
      'loss_floor', 'targets_differ', 'targets_from_other_examples'):
    return None  # the loss's own floor or targets explain the stall
  losses = np.asarray(overfit.evidence['losses'], np.float64)
  if losses[-1] < 0.8 * losses[0]:
    return None
  return Finding('targets_not_a_function',
                 f'on one fixed batch the loss stays at {losses[-1]:.3g} ({losses[0]:.3g} at '
                 f'the start) at every learning rate tried, though gradients reach every layer: '
                 'the targets the loss sees change each time the batch is drawn (labels '
                 'shuffled or paired with other examples, a label-changing augmentation)')


def findings(verdicts: dict, sweep: dict | None = None, update_ratio: float | None = None,
             configured_lr: float = 0.0) -> list[Finding]:
  """Every cause the evidence supports, the most specific first."""
  flow = verdicts.get('gradient_flow')
  flow_cause = None
  if flow is not None and flow.status == 'FAIL' and 'error' not in flow.evidence:
    flow_cause = flow.cause or 'vanishing_gradients'
  gradients = verdicts.get('gradients')
  failed = any(_failed(verdicts, check) for check in SYMPTOMS)
  dead = verdicts.get('dead_units')
  # units dead from the start because of their own negative bias are a cause; dead for want of
  # varying input (an earlier layer cut off) they are a consequence, named after it
  dead_by_bias = dead is not None and dead.evidence.get('negative_bias', False)
  specific = [
      bad_inputs(verdicts.get('inputs_before_net')),
      examples_mixed(verdicts.get('batch_dependency')),
      _from_check(verdicts, 'eval_consistency', 'outputs_not_a_function'),
      Finding('non_finite_gradients', gradients.evidence.get('finding') or 'see gradients')
      if gradients is not None and gradients.evidence.get('non_finite') else None,
      # the loss's own signature before what one batch's curve suggests
      loss_maximised(verdicts.get('loss_signature')),
      targets_from_other_examples(verdicts.get('loss_signature')),
      targets_differ(verdicts.get('overfit_one_batch'), verdicts.get('loss_signature')),
      _from_check(verdicts, 'symmetric_init', 'symmetric_init'),
      _from_check(verdicts, 'gradient_flow', flow_cause) if flow_cause else None,
      _from_check(verdicts, 'saturation', 'saturated_units'),
      _from_check(verdicts, 'dead_units', 'dying_relu') if dead_by_bias else None,
      # huge initial logits follow from saturated or exploding layers, named above first
      initial_logits_too_large(verdicts.get('loss_at_init')),
  ]
  found = [c for c in specific if c is not None]
  # Inputs cut off follow from the causes above (dead units pass nothing on); named alone they
  # are the cause themselves (a layer multiplied by zero), before units that die later.
  # A batch memorised but validation no better than without inputs points at the labels
  # before units that died while training on them.
  # A rate the sweep shows too large or too small explains units that died during the run.
  later = [None if found else inputs_detached(verdicts),
           labels_not_with_inputs(verdicts),
           learning_rate(verdicts, sweep, update_ratio, configured_lr),
           None if dead_by_bias else _from_check(verdicts, 'dead_units', 'dying_relu',
                                                 ('FAIL', 'WARN') if failed else ('FAIL',)),
           squashed_logits(verdicts),
           not_a_function_of_inputs(verdicts, sweep)]
  return found + [c for c in later if c is not None]


def ruled_out(verdicts: dict, sweep: dict | None, found: list[Finding]) -> list[str]:
  """What the checks' measurements exclude, in words."""
  causes = {f.code for f in found}
  out = []
  flow = verdicts.get('gradient_flow')
  if flow is not None and flow.status == 'PASS' and flow.evidence.get('first_over_last'):
    ratio = list(flow.evidence['first_over_last'].values())[-1]
    out.append(f'vanishing or exploding gradients (first / last layer gradient {ratio:.2g})')
  for check, what in (('dead_units', 'dead ReLUs'), ('saturation', 'saturated_units'),
                      ('symmetric_init', 'symmetric_init')):
    if _passed(verdicts, check) and verdicts[check].evidence.get('judged', True):
      out.append(what)
  dependency = verdicts.get('batch_dependency')
  if (dependency is not None and 'train' in dependency.evidence and not
      dependency.evidence['train'].get('examples_not_depending_on_own_input')):
    out.append('inputs cut off (every loss depends on its own input)')
  if _passed(verdicts, 'overfit_one_batch'):
    out.append('too little capacity (it memorises one batch)')
  elif 'targets_differ' not in causes and _loss_halved(
      verdicts.get('overfit_one_batch')):  # the loss fell, and accuracy with it
    out.append('targets other than the labels (loss and accuracy move together)')
  if sweep and not any(r['fitted'] for r in sweep.values()) and not (
      causes & {'lr_too_low', 'lr_too_high'}):  # never rule out what is named
    factors = sorted(sweep)
    out.append(f'the learning rate (x{factors[0]:g} to x{factors[-1]:g} fits one batch no '
               'better)')
  return out


def _loss_halved(overfit: Verdict | None) -> bool:
  if overfit is None or 'losses' not in overfit.evidence:
    return False
  losses = overfit.evidence['losses']
  return losses[-1] < 0.5 * losses[0]


def _short(text: str, limit: int = 160) -> str:
  return text if len(text) <= limit else text[:limit].rsplit(' ', 1)[0] + '...'


def explain(verdicts: list, sweep: dict | None = None, update_ratio: float | None = None,
            configured_lr: float = 0.0) -> list:
  """The verdicts, each failed symptom a copy carrying the most likely cause (`cause`, and
  `diagnosed` in its evidence: the report adds the cause's words to its sentence), and a
  `diagnosis` verdict at the end."""
  by_check = {v.check: v for v in verdicts}
  failed = [v.check for v in verdicts if v.check in SYMPTOMS and v.status == 'FAIL']
  found = findings(by_check, sweep, update_ratio, configured_lr)
  excluded = ruled_out(by_check, sweep, found)
  evidence = {'symptoms': failed,
              'causes': [{'code': f.code, 'cause': f.cause, 'because': f.because} for f in found],
              'ruled_out': excluded, 'learning_rate_sweep': sweep, 'update_ratio': update_ratio}
  if not found and not failed:
    return [*verdicts, Verdict('diagnosis', 'PASS', 'no symptom to explain: the net trains, '
                               'fits one batch and beats the input-free baseline', evidence)]
  if not found:
    code = 'ambiguous'
    summary = ('ambiguous: ' + ', '.join(failed) + ' failed, and no measured cause explains it;'
               ' ruled out: ' + '; '.join(excluded or ['nothing']) +
               '. Left: a bug in the data pipeline or the loss; look at inputs_before_net and'
               ' the loss code')
  else:
    first, code = found[0], found[0].code
    also = (' Also: ' + '; '.join(f'{f.cause} ({_short(f.because)})' for f in found[1:]) + '.'
            if len(found) > 1 else '')
    summary = (f'most likely cause: {first.cause}. Evidence: {first.because}.{also}' +
               (f' Ruled out: {"; ".join(excluded)}.' if excluded else ''))
  explained = [dataclasses.replace(v, cause=code, evidence={**v.evidence, 'diagnosed': True})
               if v.check in failed else v for v in verdicts]
  status = 'FAIL'
  if not failed:  # the cause's own check carries its FAIL; the net still trains
    status, summary = 'WARN', 'no symptom failed, but inside the net: ' + summary
  return [*explained, Verdict('diagnosis', status, summary, evidence, cause=code)]
