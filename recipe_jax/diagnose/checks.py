"""Recipe step 2's checks on a model and a batch, as plain functions (usable from any loop).

`apply_fn(params, x, train) -> logits` and `loss_fn(logits, labels) -> per-example losses`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recipe_jax import trees
from recipe_jax.model import losses as losses_lib, models
from recipe_jax.verdicts import Verdict


def input_dependency(apply_fn, params, x, y, loss_fn, train: bool):
  """((B, B) matrix: the norm of d loss_i / d x_j, from one jacrev over the whole batch;
  the B losses)."""
  def dependency(params, inputs, labels):
    def per_example(inputs):
      losses = loss_fn(apply_fn(params, inputs, train), labels)
      return losses, losses
    jacobian, losses = jax.jacrev(per_example, has_aux=True)(inputs)  # (B, B, *shape), (B,)
    return jnp.sqrt(jnp.sum(jacobian.reshape(len(labels), len(labels), -1) ** 2, axis=-1)), losses
  # Compiled: op by op, a ResNet's jacobian took 10x longer than compiling it.
  dep, losses = jax.jit(dependency)(params, jnp.asarray(x), jnp.asarray(y))
  return np.asarray(dep), np.asarray(losses)


def batch_dependency(apply_fn, params, x, y, loss_fn, uses_batch_statistics: bool = False,
                     tolerance: float = 1e-6) -> Verdict:
  """Karpathy's backprop check: example i's loss must depend on input i and on no other.

  Run in eval mode, where nothing may mix examples, and in train mode, where only batch
  statistics (BatchNorm) legitimately do; a real bug is caught in eval mode either way.
  With batch statistics, eval mode at init normalises with running averages that estimate
  nothing yet, so some examples may reach the head as all-zero features (a ResNet on tiny
  images); only train mode, what training sees, must then depend on every example's input.
  """
  if len(y) < 4:
    raise ValueError('use a batch of at least 4 examples: with 2, a swap looks like a mix')
  evidence, problems = {}, []
  for mode, train in (('eval', False), ('train', True)):
    dep, losses = input_dependency(apply_fn, params, x, y, loss_fn, train)
    diagonal = np.diag(dep)
    off = dep - np.diag(diagonal)
    scale = max(float(diagonal.max()), 1e-30)
    mixed = np.argwhere(off > tolerance * scale)
    # a loss already at 0 (nothing left to lower: a confident, right prediction) has no
    # gradient to give: flat, not cut off from its input; unless every loss is (a loss that
    # ignores the model)
    at_zero = np.abs(losses) <= 1e-6
    at_zero &= not np.all(at_zero)
    dead = np.flatnonzero((diagonal <= tolerance * scale) & ~at_zero)
    evidence.setdefault('losses_at_zero', {})[mode] = np.flatnonzero(at_zero).tolist()
    evidence[mode] = {'dependency': dep, 'max_off_diagonal_relative': float(off.max() / scale),
                      'mixed_pairs_loss_input': mixed[:20].tolist(),
                      'examples_not_depending_on_own_input': dead.tolist()}
    untrained_averages = not train and uses_batch_statistics and len(dead) < len(y)
    if len(dead) and not untrained_averages:
      problems.append(f'{mode} mode: losses {dead.tolist()[:5]} do not depend on their own input')
    if len(mixed) and not (train and uses_batch_statistics):
      i, j = mixed[0]
      problems.append(f'{mode} mode: loss of example {i} depends on input {j} '
                      f'({len(mixed)} mixed pairs): the model mixes examples across the batch')
  note = ''
  if uses_batch_statistics and evidence['train']['mixed_pairs_loss_input']:
    note = ' (train mode mixes through batch statistics, as BatchNorm does; eval mode is clean)'
  unseen = evidence['eval']['examples_not_depending_on_own_input']
  if uses_batch_statistics and unseen:
    note += (f'; in eval mode at init {len(unseen)} losses ignore their input, through '
             'running averages that estimate nothing yet')
  flat = sorted(set(evidence['losses_at_zero']['eval']) | set(evidence['losses_at_zero']['train']))
  if flat:
    note += (f'; the losses of examples {flat[:5]} are already 0, so they have no gradient to '
             'give (not counted as cut off from their input)')
  if problems:
    return Verdict('batch_dependency', 'FAIL', '; '.join(problems) + note, evidence)
  return Verdict('batch_dependency', 'PASS',
                 f'each loss depends only on its own input, checked on {len(y)} examples{note}',
                 evidence)


def gradients(grad_fn, params, x, y, trained_params=None) -> Verdict:
  """`grad_fn(params, x, y) -> grads`: no NaN/Inf anywhere, and every parameter array gets a
  non-zero gradient (an all-zero one is dead or detached, and is named).

  `trained_params()` (the parameters after a short run) tells a gradient that is zero only at
  init from a dead one: behind a zero-initialised scale (a ResNet block's last BatchNorm) the
  layers before it get no gradient until the scale has moved, by design."""
  grads = jax.device_get(grad_fn(params, x, y))
  paths = ['/'.join(str(getattr(k, 'key', k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
  leaves = jax.tree.leaves(grads)
  non_finite = [p for p, g in zip(paths, leaves) if not np.all(np.isfinite(g))]
  zero = [p for p, g in zip(paths, leaves) if np.all(np.isfinite(g)) and not np.any(g)]
  evidence = {'non_finite': non_finite, 'zero_gradient': zero,
              'norms': {p: float(np.linalg.norm(np.ravel(g))) for p, g in zip(paths, leaves)}}
  if non_finite:
    evidence['finding'] = f'NaN/Inf gradients in {", ".join(non_finite)}'
    return Verdict('gradients', 'FAIL', evidence['finding'], evidence,
                   cause='non_finite_gradients', where=non_finite)
  note = ''
  if zero and trained_params is not None:
    later = dict(zip(paths, jax.tree.leaves(jax.device_get(grad_fn(trained_params(), x, y)))))
    gated = [p for p in zero if np.any(later[p])]
    zero = [p for p in zero if p not in gated]
    evidence.update(zero_gradient=zero, zero_at_init_only=gated)
    if gated:
      note = (f'; {len(gated)} get none at init only (behind a zero-initialised scale, e.g. '
              f'{gated[0]}), and do after the short run')
  if zero:
    return Verdict('gradients', 'FAIL', f'parameters receive no gradient (dead or detached): '
                   f'{", ".join(zero)}', evidence, where=zero)
  return Verdict('gradients', 'PASS', f'all {len(leaves)} parameter arrays get finite, non-zero '
                 f'gradients{note}', evidence)


def fixed_seed(run_fn, seed: int) -> Verdict:
  """`run_fn(seed) -> params` (after a short run): the same seed twice gives bit-identical
  parameters, and seed + 1 gives different ones."""
  first, again, other = (trees.params_sha256(run_fn(s)) for s in (seed, seed, seed + 1))
  evidence = {'seed': seed, 'sha256': first, 'sha256_again': again, 'sha256_seed_plus_1': other}
  if first != again:
    return Verdict('fixed_seed', 'FAIL', f'two runs with seed {seed} give different parameters: '
                   'something draws randomness outside the seeded key streams', evidence)
  if first == other:
    return Verdict('fixed_seed', 'FAIL', f'seeds {seed} and {seed + 1} give identical parameters:'
                   ' the seed does not reach initialisation or data order', evidence)
  return Verdict('fixed_seed', 'PASS', f'seed {seed} twice: bit-identical parameters; seed '
                 f'{seed + 1}: different', evidence)


LOWEST_LOSS_STEPS = 300  # Adam steps on the logits themselves: cross-entropy reaches ~1e-10


def lowest_loss(loss_fn, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(logits, per-example losses) where the loss is lowest for these labels, found by Adam on
  free logits (one row an example) from zero: what the loss is minimised toward, and how low
  it can go, whatever the model."""
  labels = jnp.asarray(labels)
  z, losses = _lowest_fn(loss_fn, labels.shape, str(labels.dtype), num_classes)(labels)
  return np.asarray(z), np.asarray(losses)


@functools.lru_cache(maxsize=16)
def _lowest_fn(loss_fn, shape, dtype, num_classes):
  optimizer = optax.adam(0.1)

  def lowest(labels):
    def step(_, carry):
      z, opt_state = carry
      grads = jax.grad(lambda z: loss_fn(z, labels).sum())(z)
      updates, opt_state = optimizer.update(grads, opt_state)
      return optax.apply_updates(z, updates), opt_state
    z = jnp.zeros((shape[0], num_classes), jnp.float32)
    z, _ = jax.lax.fori_loop(0, LOWEST_LOSS_STEPS, step, (z, optimizer.init(z)))
    return z, loss_fn(z, labels)
  return jax.jit(lowest)


def loss_signature(loss_fn, labels, num_classes: int, logits: dict, builtin: bool = False,
                   max_ratio_change: float = 0.1, max_floor: float = 0.05,
                   min_at_labels: float = 0.95) -> Verdict:
  """The configured loss against the reference cross-entropy on the same logits and labels:
  `logits` {point: (B, C)} (uniform, at init, after the short run), and where the loss is
  lowest over free logits (`lowest_loss`). Told apart:
  - targets that differ from the labels: the lowest loss sits at other classes for more than
    1 - `min_at_labels` of the examples (FAIL; a proper loss is lowest at every label), e.g.
    one_hot(labels - 1), or a mapping that moves some classes;
  - a scaled loss: the same multiple of the cross-entropy at every point (WARN), e.g. a mean
    over the classes instead of a sum (1/C);
  - soft targets: a floor above zero at the labels (WARN), which overfit_one_batch aims at;
  - another loss: not proportional, no floor, lowest at the labels (PASS: focal, hinge).
  A model that squashes its logits leaves the loss's signature clean: that one shows in
  overfit_one_batch's bounded logits."""
  labels = np.asarray(labels)
  reference = losses_lib.cross_entropy
  ratios = {}
  for point, z in logits.items():
    z = jnp.asarray(z, jnp.float32)
    ce = float(np.mean(reference(z, labels)))
    if ce > 1e-3 and np.all(np.isfinite(np.asarray(z))):
      ratios[point] = float(np.mean(loss_fn(z, labels))) / ce
  best, lowest = lowest_loss(loss_fn, labels, num_classes)
  predicted = best.argmax(-1)
  at_labels = float(np.mean(predicted == labels))
  # the same examples in the reverse order: an example's target must not move with its place
  reordered = lowest_loss(loss_fn, labels[::-1], num_classes)[0].argmax(-1)[::-1]
  kept = float(np.mean(reordered == predicted))
  shifts = np.bincount((predicted - labels) % num_classes, minlength=num_classes)
  shift = int(np.argmax(shifts[1:]) + 1) if shifts[1:].any() else 0  # among the moved ones
  shift = shift - num_classes if shift > num_classes // 2 else shift  # label - 1, not + 9
  floor = float(np.mean(lowest))
  log_c = float(np.log(num_classes))
  evidence = {'ratios': ratios, 'floor': floor, 'lowest_at_labels': at_labels,
              'targets_kept_when_reordered': kept,
              'most_common_shift': shift,
              'max_ratio_change': max_ratio_change, 'max_floor': max_floor, 'builtin': builtin}
  said = ', '.join(f'{p} {r:.3g}x' for p, r in ratios.items())
  if not np.isfinite(floor):
    return Verdict('loss_signature', 'FAIL', 'the loss becomes NaN or Inf on finite logits as '
                   'they grow: a log of a probability that reaches 0?', evidence,
                   cause='loss_not_finite')
  if floor < -log_c:
    return Verdict('loss_signature', 'FAIL', f'the loss falls without bound as the logits grow '
                   f'({floor:.3g} after {LOWEST_LOSS_STEPS} steps on free logits, where '
                   'cross-entropy stops at 0): a sign flipped, so training maximises the '
                   'cross-entropy it means to minimise', evidence,
                   cause='loss_maximised')
  if kept < 0.9:
    return Verdict('loss_signature', 'FAIL', f'the loss\'s target for an example depends on '
                   f'the other examples of the batch: reordered, the class it is lowest at '
                   f'changes for {1 - kept:.0%} of them (lowest at the label for {at_labels:.0%}):'
                   ' it pairs examples with other examples\' labels (jnp.roll, a shuffle or '
                   'a sort inside the loss)', evidence,
                   cause='targets_from_other_examples')
  if at_labels < min_at_labels:
    classes = sorted({int(c) for c in labels[predicted != labels]})
    return Verdict('loss_signature', 'FAIL', f'the loss is lowest at other classes than the '
                   f'labels for {1 - at_labels:.0%} of the examples (labels '
                   f"{', '.join(map(str, classes[:5]))}{'...' if len(classes) > 5 else ''}; "
                   f'over free logits the most common: class (label {shift:+d}) mod '
                   f'{num_classes}): it trains toward other targets (labels shifted or '
                   're-encoded inside the loss, e.g. one_hot(labels - 1))', evidence,
                   cause='targets_differ')
  if floor > max_floor * log_c:
    return Verdict('loss_signature', 'WARN', f'the lowest loss reachable on these labels is '
                   f'{floor:.3g} (cross-entropy reaches 0), at the labels: soft targets or label '
                   f'smoothing; overfit_one_batch aims at {floor:.3g} + its target, and a loss '
                   f'near {floor:.3g} is memorisation, not a stall (ratio to cross-entropy: '
                   f'{said})', evidence,
                   cause='loss_floor')
  values = list(ratios.values())
  if values and (max(values) - min(values)) <= max_ratio_change * max(values):
    mean = float(np.mean(values))
    evidence['scale'] = mean
    if abs(mean - 1) > max_ratio_change:
      guess = (f' (1/{num_classes}: a mean over the {num_classes} classes instead of a sum?)'
               if abs(mean * num_classes - 1) < max_ratio_change else '')
      return Verdict('loss_signature', 'WARN', f'the loss is {mean:.3g}x the cross-entropy at '
                     f'every point measured ({said}){guess}: it trains as cross-entropy with '
                     f'gradients {mean:.3g}x as large (Adam does not mind; SGD\'s learning rate '
                     f'does), and loss_at_init expects {mean:.3g} x ln {num_classes}', evidence,
                   cause='loss_scaled')
    return Verdict('loss_signature', 'PASS', ('the built-in cross-entropy' if builtin else
                   'the cross-entropy') + f' ({said}), lowest at the labels, floor '
                   f'{floor:.2g}', evidence)
  return Verdict('loss_signature', 'PASS', f'not a multiple of the cross-entropy ({said}), '
                 f'but lowest at the labels ({at_labels:.0%}) with floor {floor:.2g}: another '
                 'loss for the same targets', evidence, cause='loss_not_cross_entropy')


def expected_initial_loss(class_prior, log_prior_bias: bool, loss_fn=None, labels=None) -> float:
  """The loss of a net that predicts the class prior (its bias is the log prior) or the
  uniform distribution: what a well-initialised net's loss starts near. With `loss_fn` and
  `labels`, the configured loss itself on those predictions (a scaled or smoothed loss starts
  elsewhere than the cross-entropy); without, the cross-entropy (the prior's entropy, or
  log C)."""
  prior = np.asarray(class_prior, np.float64)
  logits = np.log(np.maximum(prior, 1e-12)) if log_prior_bias else np.zeros_like(prior)
  if loss_fn is not None:
    labels = np.asarray(labels)
    tiled = np.tile(logits.astype(np.float32), (len(labels), 1))
    return float(np.mean(jax.jit(loss_fn)(tiled, labels)))
  if not log_prior_bias:
    return float(np.log(len(prior)))
  return float(-np.sum(prior * np.log(np.maximum(prior, 1e-12))))


def loss_at_init(batch_losses, expected: float, max_z: float = 5.0,
                 max_ratio: float = 2.0) -> Verdict:
  """Two-sided: the mean initial loss over several batches must lie within `max_z` batch-to-
  batch standard deviations of `expected`. Too low means the net knows the labels before
  training (FAIL). Too high means overconfident initial logits: a WARN while the loss is under
  `max_ratio` x expected (a default init whose logits are not small yet: the first steps only
  shrink them), a FAIL beyond (e.g. a final layer initialised far too large)."""
  losses = np.asarray(batch_losses, np.float64)
  if len(losses) < 2:
    raise ValueError('loss_at_init needs at least 2 batches to measure their spread')
  mean, spread = float(losses.mean()), float(losses.std(ddof=1))
  tolerance = max(max_z * spread, 1e-3 * max(expected, 1.0))  # an all-equal loss has no spread
  z = (mean - expected) / max(spread, 1e-12)
  ratio = mean / expected if expected > 0 else float('inf')
  evidence = {'batch_losses': losses, 'mean': mean, 'batch_std': spread, 'expected': expected,
              'z': z, 'tolerance': tolerance, 'max_z': max_z, 'ratio': ratio,
              'max_ratio': max_ratio}
  measured = (f'loss at init {mean:.4f} (+-{spread:.4f} over {len(losses)} batches), expected '
              f'{expected:.4f}')
  if not np.isfinite(mean):
    return Verdict('loss_at_init', 'FAIL', f'{measured}: not finite', evidence)
  if abs(mean - expected) <= tolerance:
    return Verdict('loss_at_init', 'PASS', f'{measured}: within {max_z:g} batch std', evidence)
  away = f'{abs(z):.1f} batch std away'
  if mean < expected:
    return Verdict('loss_at_init', 'FAIL', f'{measured}, {away}: too low: the net predicts '
                   'labels before any training, e.g. labels leak into the inputs or the loss is '
                   'not the cross-entropy it claims', evidence)
  if ratio < max_ratio:
    return Verdict('loss_at_init', 'WARN', f'{measured}, {away} but {ratio:.3g}x expected '
                   f'(FAIL from {max_ratio:g}x): the initial logits are not small, so the first '
                   'steps are spent shrinking them; a smaller or zero-initialised last layer '
                   'starts at the expected loss', evidence)
  return Verdict('loss_at_init', 'FAIL', f'{measured}, {away}, {ratio:.3g}x expected: too high: '
                 'the initial predictions are overconfident, e.g. a final layer initialised too '
                 'large or logits scaled up', evidence)


def init_well(logits_fn, params, log_prior, enabled: bool, rtol: float = 1e-4) -> Verdict:
  """The output bias starts at the log class priors ("init well") and really feeds the logits.

  `logits_fn(params) -> logits` on a few fixed inputs; `rtol`: how exactly a bias shift shows
  in them (`models.logits_rtol`).
  """
  num_classes = len(log_prior)
  candidates = models.output_bias_candidates(params, num_classes)
  path = models.find_output_bias(logits_fn, params, num_classes, rtol)
  evidence = {'enabled': enabled, 'candidates': ['/'.join(p) for p in candidates],
              'output_bias': '/'.join(path) if path else None, 'log_prior': log_prior}
  if path is None and candidates:
    return Verdict('init_well', 'FAIL', f'no bias of shape ({num_classes},) adds to the logits '
                   f'(tried {", ".join(evidence["candidates"])}): the model applies something '
                   'after its last layer (a softmax before a logits loss?)', evidence)
  if path is None:
    return Verdict('init_well', 'WARN', f'the model has no output bias of shape ({num_classes},);'
                   ' its initial predictions cannot be set to the class priors', evidence)
  bias = np.asarray(trees.get_leaf(params, path))
  evidence['bias'] = bias
  if not enabled:
    return Verdict('init_well', 'WARN', 'model.log_prior_output_bias is off: '
                   f'{evidence["output_bias"]} keeps its default init, not the log class priors',
                   evidence)
  if not np.allclose(bias, log_prior, atol=1e-6):
    return Verdict('init_well', 'FAIL', f'{evidence["output_bias"]} is not the log class prior '
                   f'(max difference {np.abs(bias - log_prior).max():.3g}): the init did not take '
                   'effect', evidence)
  return Verdict('init_well', 'PASS', f'{evidence["output_bias"]} = log class priors '
                 f'({log_prior.min():.3g}..{log_prior.max():.3g}, the logs of priors '
                 f'{np.exp(log_prior).min():.3g}..{np.exp(log_prior).max():.3g}), and shifting '
                 'it shifts every logit by the same amount', evidence)


def dumb_baselines(val_labels, class_prior, zero_input: dict, model: dict, margin: float,
                   human: float | None = None, prior_loss: float | None = None) -> Verdict:
  """Majority class, class prior, and the same model trained on zeroed inputs, against the real
  model trained for as many steps. `zero_input` and `model` hold validation 'accuracy', 'loss'.
  The real model must beat the input-independent one by `margin` in accuracy. `prior_loss` is
  the class prior's loss under the configured loss (default: its cross-entropy)."""
  labels = np.asarray(val_labels)
  prior = np.asarray(class_prior, np.float64)
  majority = int(np.argmax(prior))
  table = {
      'majority class': {'accuracy': float(np.mean(labels == majority)), 'loss': None},
      'class prior': {'accuracy': float(np.mean(labels == majority)),
                      'loss': float(-np.mean(np.log(np.maximum(prior[labels], 1e-12))))
                      if prior_loss is None else float(prior_loss)},
      'zero input': zero_input,
      'model': model,
  }
  if human is not None:
    table['human'] = {'accuracy': float(human), 'loss': None}
  evidence = {'validation': table, 'margin': margin}
  gain = model['accuracy'] - zero_input['accuracy']
  line = (f"val accuracy: model {model['accuracy']:.3f}, zero input {zero_input['accuracy']:.3f},"
          f" majority {table['majority class']['accuracy']:.3f}"
          + (f', human {human:.3f}' if human is not None else ''))
  if gain < margin:
    return Verdict('dumb_baselines', 'FAIL', f'{line}: the model beats the input-independent '
                   f'baseline by {gain:+.3f} < {margin:g}, so it does not use its inputs',
                   evidence)
  return Verdict('dumb_baselines', 'PASS', f'{line}: +{gain:.3f} over the input-independent '
                 'baseline', evidence)


STILL_FALLING = 0.2  # the loss fell this much (relative) over the run's last fifth: not done


def still_falling(losses) -> float:
  """How much (relative) the loss fell over the last fifth of a run: the mean of its last
  tenth against the mean of the tenth before the last fifth."""
  losses = np.asarray(losses, np.float64)
  window = max(1, len(losses) // 10)
  if len(losses) < 3 * window:
    return 0.0
  before, last = losses[-3 * window:-2 * window].mean(), losses[-window:].mean()
  return float((before - last) / before) if before > 0 else 0.0


def squashed_floor(logit_range: float, num_classes: int) -> float:
  """The lowest cross-entropy logits spread over at most `logit_range` can reach:
  log(1 + (C - 1) exp(-range)) (probabilities in [0, 1] as logits: about 1.46 for 10
  classes)."""
  return float(np.log1p((num_classes - 1) * np.exp(-logit_range)))


def overfit_one_batch(losses, accuracies, max_loss: float, *, eval_loss: float | None = None,
                      eval_accuracy: float | None = None, floor: float = 0.0,
                      logit_range: float | None = None, num_classes: int | None = None
                      ) -> Verdict:
  """The per-step (train-mode) loss and accuracy of training on one small fixed batch: it must
  reach `floor + max_loss` (`floor`: the lowest loss the configured loss can reach on these
  labels, `loss_signature`) and 100% accuracy. `eval_loss` and `eval_accuracy`: the same batch
  in eval mode at the end, deterministic: dropout keeps a train-mode loss above the target on
  a batch the net has memorised. A loss still falling when the steps run out is a WARN that
  asks for more steps, not a FAIL; `logit_range` (the largest spread of an example's logits at
  the end) tells squashed logits, whose spread is bounded, from logits still growing."""
  losses, accuracies = np.asarray(losses), np.asarray(accuracies)
  final_loss, final_accuracy = float(losses[-1]) + 0.0, float(accuracies[-1])  # no '-0'
  target = floor + max_loss
  reached = np.flatnonzero((losses <= target) & (accuracies >= 1.0))
  falling = still_falling(losses)
  evidence = {'losses': losses, 'accuracies': accuracies, 'final_loss': final_loss,
              'final_accuracy': final_accuracy, 'max_loss': max_loss, 'floor': floor,
              'target': target, 'eval_loss': eval_loss, 'eval_accuracy': eval_accuracy,
              'still_falling': falling, 'logit_range': logit_range,
              'first_step_fitted': int(reached[0]) + 1 if len(reached) else None}
  if num_classes is not None and logit_range is not None:
    evidence['squashed_floor'] = squashed_floor(logit_range, num_classes)
  aim = (f'target <= {target:.3g}: its floor {floor:.3g} + {max_loss:g}' if floor > 0 else
         f'target <= {max_loss:g}')
  if final_loss <= target and final_accuracy >= 1.0:
    return Verdict('overfit_one_batch', 'PASS', f'loss {final_loss:.2g} and accuracy 100% after '
                   f'{len(losses)} steps (first fitted at step {evidence["first_step_fitted"]}'
                   f'{"; " + aim if floor > 0 else ""})', evidence)
  if eval_loss is not None and eval_loss <= target and eval_accuracy >= 1.0:
    return Verdict('overfit_one_batch', 'PASS', f'memorised: in eval mode (deterministic) loss '
                   f'{eval_loss:.2g} and accuracy 100% after {len(losses)} steps; in train mode, '
                   f'which differs (dropout, noise or batch statistics), it stays at '
                   f'{final_loss:.2g} ({aim})', evidence)
  line = (f'after {len(losses)} steps on one batch: loss {final_loss:.3g} ({aim}), accuracy '
          f'{final_accuracy:.0%}' + (f'; in eval mode {eval_loss:.3g} and {eval_accuracy:.0%}'
                                     if eval_loss is not None else ''))
  if falling >= STILL_FALLING and final_loss > target:
    return Verdict('overfit_one_batch', 'WARN', f'{line}: still falling ({falling:.0%} over the '
                   'last fifth of the steps), so not memorised yet rather than unable to: give '
                   'it more steps (sanity.overfit_steps) or a larger learning rate', evidence)
  stalled = ', no longer falling' if final_loss > target else ''
  return Verdict('overfit_one_batch', 'FAIL', f'{line}{stalled}: a net that cannot memorise a '
                 'few examples has a bug', evidence)


def decreasing_loss(losses, min_drop: float = 0.1, window_fraction: float = 0.1) -> Verdict:
  """A short run's training loss must fall: the last window's mean at least `min_drop`
  (relative) below the first window's, and a negative least-squares slope."""
  losses = np.asarray(losses, np.float64)
  window = max(1, int(len(losses) * window_fraction))
  first, last = float(losses[:window].mean()), float(losses[-window:].mean())
  steps = np.arange(len(losses))
  slope = float(np.polyfit(steps, losses, 1)[0]) if len(losses) > 1 else 0.0
  drop = (first - last) / abs(first) if first else 0.0
  evidence = {'first_window_mean': first, 'last_window_mean': last, 'relative_drop': drop,
              'slope_per_step': slope, 'window': window, 'min_drop': min_drop}
  change = f'fell {drop:.1%}' if drop >= 0 else f'rose {-drop:.1%}'
  line = (f'loss {first:.4f} (first {window} steps) -> {last:.4f} (last {window}): {change}, '
          f'slope {slope:.2e}/step')
  if not np.all(np.isfinite(losses)):
    return Verdict('decreasing_loss', 'FAIL', 'the training loss became NaN/Inf', evidence)
  if drop >= min_drop and slope < 0:
    return Verdict('decreasing_loss', 'PASS', line, evidence)
  return Verdict('decreasing_loss', 'FAIL', f'{line}: the loss does not fall by {min_drop:.0%}',
                 evidence)


def inputs_before_net(x) -> Verdict:
  """Statistics of the exact batch that enters the model. FAIL when non-finite, identical for
  every example, or grossly off unit scale (RMS > 3, as raw pixel values are); WARN when
  mildly off (|mean| > 0.5 or std outside [0.5, 2], e.g. images in [0, 1])."""
  x = np.asarray(x, np.float64)
  finite = np.isfinite(x)
  mean, std = float(x[finite].mean()), float(x[finite].std())
  rms = float(np.sqrt(mean ** 2 + std ** 2))
  evidence = {'shape': list(x.shape), 'dtype': str(x.dtype), 'min': float(x[finite].min()),
              'max': float(x[finite].max()), 'mean': mean, 'std': std, 'rms': rms,
              'non_finite': int((~finite).sum())}
  line = (f'batch {tuple(x.shape)}: min {evidence["min"]:.3g}, max {evidence["max"]:.3g}, mean '
          f'{mean:.3g}, std {std:.3g}')
  if evidence['non_finite']:
    return Verdict('inputs_before_net', 'FAIL', f'{line}: {evidence["non_finite"]} NaN/Inf '
                   'values', evidence,
                   cause='inputs_non_finite')
  if len(x) > 1 and np.all(x == x[:1]):
    return Verdict('inputs_before_net', 'FAIL', f'{line}: every example is identical; the net '
                   'cannot learn from these inputs', evidence,
                   cause='inputs_identical')
  if rms > 3 or rms < 0.05:
    return Verdict('inputs_before_net', 'FAIL', f'{line}: far from unit scale (RMS {rms:.3g}); '
                   'the pipeline looks unnormalised (set dataset.normalize=True)', evidence,
                   cause='inputs_unnormalised')
  if abs(mean) > 0.5 or not 0.5 <= std <= 2:
    return Verdict('inputs_before_net', 'WARN', f'{line}: not standardised (mean 0, std 1); '
                   'training usually goes easier when it is', evidence)
  return Verdict('inputs_before_net', 'PASS', f'{line}: standardised', evidence)


def prediction_dynamics(probabilities, labels) -> Verdict:
  """`probabilities` (evals, examples, classes) on one fixed batch over a run. WARN when they
  never move, or end predicting one class for every example."""
  p = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels)
  correct = (p.argmax(-1) == labels).mean(-1)
  movement = float(np.abs(p[-1] - p[0]).max())
  final_classes = np.unique(p[-1].argmax(-1))
  evidence = {'accuracy_per_eval': correct, 'max_probability_change': movement,
              'final_predicted_classes': final_classes}
  line = (f'{p.shape[1]} fixed examples over {p.shape[0]} evals: accuracy {correct[0]:.0%} -> '
          f'{correct[-1]:.0%}')
  if movement < 1e-3:
    return Verdict('prediction_dynamics', 'WARN', f'{line}; the predictions never moved', evidence)
  if len(final_classes) == 1 and len(np.unique(labels)) > 1:
    return Verdict('prediction_dynamics', 'WARN', f'{line}; every example ends predicted as '
                   f'class {final_classes[0]} (collapsed to one class)', evidence)
  return Verdict('prediction_dynamics', 'PASS', line, evidence)


def human_baseline(human: float | None, model_accuracy: float, steps: int) -> Verdict:
  evidence = {'human': human, 'model_accuracy': model_accuracy, 'steps': steps}
  if human is None:
    return Verdict('human_baseline', 'WARN', 'config.human_baseline is not set: write down how '
                   'well you classify these examples yourself, to know what to aim for', evidence)
  return Verdict('human_baseline', 'PASS', f'human accuracy {human:.1%}; the model reaches '
                 f'{model_accuracy:.1%} after a {steps}-step sanity run', evidence)


def eval_consistency(apply_fn, params, x, keys) -> Verdict:
  """`apply_fn(params, x, train, key) -> logits`, with the pipeline's dropout key `key`.

  Eval mode must be a function of each example alone: the same batch twice gives the same
  outputs, and a permuted batch the same outputs permuted (an output that depends on its
  position in the batch is a dropout mask, a random draw or state left on in eval mode). Train
  mode may be random, but only through the pipeline's keys: the same key twice gives the same
  outputs (`keys`: two different keys; a second one shows whether train mode uses it)."""
  x = np.asarray(x)
  permutation = np.arange(len(x))[::-1]
  first, again = (np.asarray(apply_fn(params, x, False, keys[0])) for _ in range(2))
  permuted = np.asarray(apply_fn(params, x[permutation], False, keys[0]))
  scale = max(float(np.abs(first).max()), 1.0)
  moved = np.abs(permuted - first[permutation]).max(-1) / scale
  train_a, train_a_again, train_b = (np.asarray(apply_fn(params, x, True, k))
                                     for k in (keys[0], keys[0], keys[1]))
  evidence = {'eval_twice_max_difference': float(np.abs(first - again).max()),
              'eval_permuted_max_relative_difference': float(moved.max()),
              'examples_whose_output_moved_with_their_position':
                  np.flatnonzero(moved > 1e-4).tolist(),
              'train_same_key_max_difference': float(np.abs(train_a - train_a_again).max()),
              'train_uses_the_key': bool(not np.array_equal(train_a, train_b)),
              'batch': len(x)}
  problems = []
  if not np.array_equal(first, again):
    problems.append('eval mode gives other outputs for the same batch a second time: it draws '
                    'randomness (a host callback, a global random state) that no key controls')
  if moved.max() > 1e-4:
    problems.append(f'in eval mode the output of {int((moved > 1e-4).sum())} of {len(x)} '
                    'examples changes when the batch is reordered: it depends on the '
                    "example's position in the batch (a dropout mask or a random draw in eval "
                    'mode?)')
  if not np.array_equal(train_a, train_a_again):
    problems.append('train mode gives other outputs for the same batch and the same dropout '
                    "key: its randomness comes from outside the pipeline's key streams, so runs "
                    'cannot be reproduced')
  if problems:
    evidence['finding'] = '; '.join(problems)
    return Verdict('eval_consistency', 'FAIL', evidence['finding'], evidence,
                   cause='outputs_not_a_function')
  uses = ('train mode is random only through the pipeline\'s keys' if evidence['train_uses_the_key']
          else 'train mode is deterministic')
  return Verdict('eval_consistency', 'PASS', f'eval mode gives the same outputs twice and '
                 f'follows a reordered batch ({len(x)} examples); {uses}', evidence)
