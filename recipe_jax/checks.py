"""Recipe step 2's checks on a model and a batch, as plain functions (usable from any loop).

`apply_fn(params, x, train) -> logits` and `loss_fn(logits, labels) -> per-example losses`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax.report import Verdict


def input_dependency(apply_fn, params, x, y, loss_fn, train: bool):
  """(B, B) matrix: the norm of d loss_i / d x_j, from one jacrev over the whole batch."""
  per_example = lambda inputs: loss_fn(apply_fn(params, inputs, train), y)
  jacobian = jax.jacrev(per_example)(jnp.asarray(x))  # (B, B, *example_shape)
  return np.asarray(jnp.sqrt(jnp.sum(jacobian.reshape(len(y), len(y), -1) ** 2, axis=-1)))


def batch_dependency(apply_fn, params, x, y, loss_fn, uses_batch_statistics: bool = False,
                     tolerance: float = 1e-6) -> Verdict:
  """Karpathy's backprop check: example i's loss must depend on input i and on no other.

  Run in eval mode, where nothing may mix examples, and in train mode, where only batch
  statistics (BatchNorm) legitimately do; a real bug is caught in eval mode either way.
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
    evidence[mode] = {'max_off_diagonal_relative': float(off.max() / scale),
                      'mixed_pairs_loss_input': mixed[:20].tolist(),
                      'examples_not_depending_on_own_input': dead.tolist()}
    if len(dead):
      problems.append(f'{mode} mode: losses {dead.tolist()[:5]} do not depend on their own input')
    if len(mixed) and not (train and uses_batch_statistics):
      i, j = mixed[0]
      problems.append(f'{mode} mode: loss of example {i} depends on input {j} '
                      f'({len(mixed)} mixed pairs): the model mixes examples across the batch')
  note = ''
  if uses_batch_statistics and evidence['train']['mixed_pairs_loss_input']:
    note = ' (train mode mixes through batch statistics, as BatchNorm does; eval mode is clean)'
  if problems:
    return Verdict('batch_dependency', 'FAIL', '; '.join(problems), evidence)
  return Verdict('batch_dependency', 'PASS',
                 f'each loss depends only on its own input, checked on {len(y)} examples{note}',
                 evidence)


def gradients(grad_fn, params, x, y) -> Verdict:
  """`grad_fn(params, x, y) -> grads`: no NaN/Inf anywhere, and every parameter array gets a
  non-zero gradient (an all-zero one is dead or detached, and is named)."""
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
  if zero:
    return Verdict('gradients', 'FAIL', f'parameters receive no gradient (dead or detached): '
                   f'{", ".join(zero)}', evidence)
  return Verdict('gradients', 'PASS', f'all {len(leaves)} parameter arrays get finite, non-zero '
                 'gradients', evidence)
