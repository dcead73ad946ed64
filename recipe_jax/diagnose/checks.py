"""Recipe step 2's checks on a model and a batch, as plain functions (usable from any loop).

`apply_fn(params, x, train) -> logits` and `loss_fn(logits, labels) -> per-example losses`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax.engine import trees
from recipe_jax.model import models
from recipe_jax.report.results import Verdict


def input_dependency(apply_fn, params, x, y, loss_fn, train: bool):
  """(B, B) matrix: the norm of d loss_i / d x_j, from one jacrev over the whole batch."""
  def dependency(params, inputs, labels):
    per_example = lambda inputs: loss_fn(apply_fn(params, inputs, train), labels)
    jacobian = jax.jacrev(per_example)(inputs)  # (B, B, *example_shape)
    return jnp.sqrt(jnp.sum(jacobian.reshape(len(labels), len(labels), -1) ** 2, axis=-1))
  # Compiled: op by op, a ResNet's jacobian took 10x longer than compiling it.
  return np.asarray(jax.jit(dependency)(params, jnp.asarray(x), jnp.asarray(y)))


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
    dep = input_dependency(apply_fn, params, x, y, loss_fn, train)
    diagonal = np.diag(dep)
    off = dep - np.diag(diagonal)
    scale = max(float(diagonal.max()), 1e-30)
    mixed = np.argwhere(off > tolerance * scale)
    dead = np.flatnonzero(diagonal <= tolerance * scale)
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
  if problems:
    return Verdict('batch_dependency', 'FAIL', '; '.join(problems), evidence)
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
    return Verdict('gradients', 'FAIL', f'NaN/Inf gradients in {", ".join(non_finite)}', evidence)
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
                   f'{", ".join(zero)}', evidence)
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


def expected_initial_loss(class_prior, log_prior_bias: bool) -> float:
  """Cross-entropy of a net that predicts the class prior (its bias is the log prior) or the
  uniform distribution (log C): what a well-initialised net's loss starts near."""
  prior = np.asarray(class_prior, np.float64)
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


def overfit_one_batch(losses, accuracies, max_loss: float) -> Verdict:
  """The per-step loss and accuracy of training on one small fixed batch: it must reach
  `max_loss` and 100% accuracy. `losses`/`accuracies` come from any training loop."""
  losses, accuracies = np.asarray(losses), np.asarray(accuracies)
  final_loss, final_accuracy = float(losses[-1]) + 0.0, float(accuracies[-1])  # no '-0'
  reached = np.flatnonzero((losses <= max_loss) & (accuracies >= 1.0))
  evidence = {'losses': losses, 'accuracies': accuracies, 'final_loss': final_loss,
              'final_accuracy': final_accuracy, 'max_loss': max_loss,
              'first_step_fitted': int(reached[0]) + 1 if len(reached) else None}
  if final_loss <= max_loss and final_accuracy >= 1.0:
    return Verdict('overfit_one_batch', 'PASS', f'loss {final_loss:.2g} and accuracy 100% after '
                   f'{len(losses)} steps (first fitted at step {evidence["first_step_fitted"]})',
                   evidence)
  return Verdict('overfit_one_batch', 'FAIL', f'after {len(losses)} steps on one batch: loss '
                 f'{final_loss:.3g} (target <= {max_loss:g}), accuracy {final_accuracy:.0%}: a '
                 'net that cannot memorise a few examples has a bug', evidence)


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
                   'values', evidence)
  if len(x) > 1 and np.all(x == x[:1]):
    return Verdict('inputs_before_net', 'FAIL', f'{line}: every example is identical; the net '
                   'cannot learn from these inputs', evidence)
  if rms > 3 or rms < 0.05:
    return Verdict('inputs_before_net', 'FAIL', f'{line}: far from unit scale (RMS {rms:.3g}); '
                   'the pipeline looks unnormalised (set dataset.normalize=True)', evidence)
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
    return Verdict('eval_consistency', 'FAIL', '; '.join(problems), evidence)
  uses = ('train mode is random only through the pipeline\'s keys' if evidence['train_uses_the_key']
          else 'train mode is deterministic')
  return Verdict('eval_consistency', 'PASS', f'eval mode gives the same outputs twice and '
                 f'follows a reordered batch ({len(x)} examples); {uses}', evidence)
