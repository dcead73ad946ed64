"""Looking inside the net ("visualize the activations at each layer"): per-layer measurements
on one batch, for any model, with no change to the user's code.

`read_program` traces the model once (`program.read`): its kernel layers in call order and its
nonlinearities as sites, each with the layer whose units it applies to. `measure` runs that
program in train mode on one batch and takes the gradient of the loss. It returns:
- for each layer that owns a kernel: the activation entering it (mean, std, histogram) and
  its kernel's gradient and weight norms;
- for each judged site (ReLUs, which can die; tanh, sigmoid and hard-tanh used as
  activations, which can saturate): the fraction of its units zero for every example, the
  fraction of its outputs saturated, the spread of its pre-activations, and the share of the
  gradient arriving at its output that passes to its input (`gradient_share`, against the
  function's peak slope: 1 while every unit passes gradient as well as it can, 0 when none
  does).
The sanity stage reads them at init and after its short run; the training monitor at every
eval. `inside.py` turns them into findings that name the layer.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from recipe_jax import console
from recipe_jax.diagnose import program as program_lib
from recipe_jax.engine import compiled
from recipe_jax.engine import state as state_lib
from recipe_jax.model import layers

HISTOGRAM_BINS = 30
EXAMPLES = 64  # every probe batch is this many rows: sanity and each run's monitor share a program
SIGMOID_SATURATED = 0.01  # sigmoid outputs below this or above 1 - this: slope < 4% of its peak
TANH_SATURATED = 0.99  # |tanh| above this: slope < 2% of its peak


def _spec(a):
  return jax.ShapeDtypeStruct(np.shape(a), a.dtype)


def read_program(model, variables, x, dropout_key):
  """The model's program on probe batches (`program.read`), or None when it cannot be read
  (the checks that need it then say so). Traced only, nothing runs; a function of the model
  and the shapes alone, so each run of a stage (and the next stage) reads it once."""
  leaves, tree = jax.tree.flatten(jax.tree.map(_spec, variables))
  example = jax.ShapeDtypeStruct((EXAMPLES, *np.shape(x)[1:]), x.dtype)
  return _read_program(model, tree, tuple(leaves), example, _spec(dropout_key))


@compiled.cached
def _read_program(model, tree, leaves: tuple, x, dropout_key):
  try:
    return program_lib.read(model, jax.tree.unflatten(tree, leaves), x, dropout_key)
  except Exception:  # a construct the reader does not know: the checks fall back and say so
    logging.info('the model\'s program could not be read', exc_info=True,
                 extra=console.FILE_ONLY)
    return None


def layer_order(model, variables, x, dropout_key) -> tuple[list[str], list[str]]:
  """(the kernel layers in the order the model calls them, the kernel layers it owns but no
  record saw: inside a lifted loop or a custom op)."""
  found = read_program(model, variables, x, dropout_key)
  if found is not None:
    return list(found.order), list(found.unseen)
  leaves, tree = jax.tree.flatten(jax.tree.map(_spec, variables))
  example = jax.ShapeDtypeStruct((EXAMPLES, *np.shape(x)[1:]), x.dtype)
  order, unseen = _layer_order(model, tree, tuple(leaves), example, _spec(dropout_key))
  return list(order), list(unseen)


@compiled.cached
def _layer_order(model, tree, leaves: tuple, x, dropout_key) -> tuple[tuple, tuple]:
  variables = jax.tree.unflatten(tree, leaves)

  def apply(variables, x, dropout_key):
    return state_lib.on_one_device(state_lib.apply_model)(
        model, variables, x, True, rngs={'dropout': dropout_key},
        mutable=['batch_stats', layers.RECORDED])
  with layers.recording() as called:
    _, collections = jax.eval_shape(apply, variables, x, dropout_key)
  seen = layers.recorded(collections.get(layers.RECORDED, {}))
  order = tuple(path for path in called if path in seen)  # a loop's body is traced, not recorded
  return order, tuple(path for path in layers.kernel_layers(variables['params'])
                      if path not in seen)


def measure(model, loss_fn, program, order: list[str], kernels: list[str], params, batch_stats,
            x, y, dropout_key) -> dict:
  """Per-layer and per-site measurements on the first `EXAMPLES` rows of a batch (host numpy).
  `program`: `read_program`'s (None: layers only, no sites); `order`: the recorded layers in
  call order; `kernels`: the layers whose gradient and weight norms are wanted."""
  fn = _measure_fn(model, loss_fn, program, tuple(order), tuple(kernels))
  rows = np.arange(EXAMPLES) % len(x)  # fewer rows are cycled: a dead unit stays dead
  return jax.device_get(fn(params, batch_stats, np.asarray(x)[rows], np.asarray(y)[rows],
                           dropout_key))


def leaf(tree, path: str):
  """The subtree at a layer path ('block_0/Dense_1'); a key that is a number in the path may
  be an integer in the tree (an NNX list's index: 'nnx/ups/0')."""
  for key in path.split('/'):
    if key:
      tree = tree[key] if key in tree or not key.isdigit() else tree[int(key)]
  return tree


def kernel_of(params, layer: str):
  own = leaf(params, layer)
  return next(own[name] for name in layers.KERNEL_NAMES if name in own)


def _input_stats(a):
  a = a.astype(jnp.float32)
  low, high = jnp.min(a), jnp.max(a)
  return {'min': low, 'max': high, 'mean': jnp.mean(a), 'std': jnp.std(a),
          'histogram': jnp.histogram(a, HISTOGRAM_BINS, (low, jnp.maximum(high, low + 1e-6)))[0]}


def _site_stats(site, pre, post, grad_in, grad_out):
  """What a judged site's units do on the batch (`measure`'s docstring)."""
  post = post.astype(jnp.float32)
  rows = post.reshape(-1, post.shape[-1])
  if site.kind == 'sigmoid':
    saturated = (post < SIGMOID_SATURATED) | (post > 1 - SIGMOID_SATURATED)
  elif site.kind == 'tanh':
    saturated = jnp.abs(post) > TANH_SATURATED
  elif site.kind == 'hard_tanh':
    saturated = jnp.abs(post) >= 1.0
  else:
    saturated = jnp.zeros_like(post, bool)
  peak = program_lib.SATURATES.get(site.kind, 1.0)
  arriving = _norm(grad_out)
  return {'dead_fraction': 1.0 - jnp.mean(jnp.any(rows != 0, axis=0)),
          'saturated_fraction': jnp.mean(saturated),
          'preactivation_mean': jnp.mean(pre.astype(jnp.float32)),
          'preactivation_std': jnp.std(pre.astype(jnp.float32)),
          'gradient_share': jnp.where(arriving > 0, _norm(grad_in) / (peak * arriving + 1e-30),
                                      jnp.nan),
          'units': post.shape[-1]}


@compiled.cached
def _measure_fn(model, loss_fn, program, order: tuple, kernels: tuple):
  sites = program.judged('dead') + program.judged('saturation') if program else []

  def forward(params, batch_stats, x, dropout_key, perturb):
    variables = {'params': params, 'batch_stats': batch_stats}
    if program is None:
      with layers.recording():
        logits, collections = state_lib.on_one_device(state_lib.apply_model)(
            model, variables, x, True, rngs={'dropout': dropout_key},
            mutable=['batch_stats', layers.RECORDED])
      return logits, layers.recorded(collections.get(layers.RECORDED, {})), {}
    return state_lib.on_one_device(program_lib.evaluate)(program, variables, x, dropout_key,
                                                         perturb)

  def measured(params, batch_stats, x, y, dropout_key):
    def loss_and_records(params, perturb):
      logits, records, seen = forward(params, batch_stats, x, dropout_key, perturb)
      return loss_fn(logits, y).mean(), (records, seen)
    perturb = program_lib.zeros_at(program, sites) if program else {}
    (loss, (records, seen)), (grads, at_sites) = jax.value_and_grad(
        loss_and_records, argnums=(0, 1), has_aux=True)(params, perturb)
    activations = {path: {'input': _input_stats(records[path][0])}
                   for path in order if path in records}
    return {'loss': loss, 'activations': activations,
            'sites': {s.name: _site_stats(s, *seen[s.op], *at_sites[s.op]) for s in sites},
            'grad_norm': {k: _norm(kernel_of(grads, k)) for k in kernels},
            'weight_norm': {k: _norm(kernel_of(params, k)) for k in kernels}}
  return jax.jit(measured)


def _norm(t):
  return jnp.sqrt(jnp.sum(jnp.square(t.astype(jnp.float32))))


def symmetric_units(params, layer: str, consumer: str | None = None) -> dict:
  """Units (the kernel's last axis) whose incoming weights equal another unit's exactly, and
  whose outgoing weights in `consumer` (the next layer, when its kernel reads these units)
  do too: they compute the same function and get the same gradient, so they stay copies.
  Copies that feed the next layer through different weights get different gradients and
  part (a zero-initialised residual branch)."""
  kernel = np.asarray(kernel_of(params, layer), np.float32)
  units = kernel.reshape(-1, kernel.shape[-1]).T
  if consumer is not None:
    out = np.asarray(kernel_of(params, consumer), np.float32)
    if out.ndim >= 2 and out.shape[-2] == units.shape[0]:
      units = np.concatenate([units, np.moveaxis(out, -2, 0).reshape(units.shape[0], -1)], 1)
  _, group, counts = np.unique(units, axis=0, return_inverse=True, return_counts=True)
  copied = counts[np.ravel(group)] > 1
  return {'units': int(len(units)), 'copied_fraction': float(copied.mean()),
          'all_zero': bool(not np.any(kernel)), 'groups': int(len(counts))}


class UpdateRatios:
  """A loop hook, run after every step: each layer's update-to-weight ratio
  ||w_t - w_(t-1)|| / ||w_(t-1)|| at the steps that are multiples of `every`, from a copy of
  the kernels taken the step before (the step donates the state it is given). Nothing is read
  back until `series()`."""

  def __init__(self, kernels: list[str], every: int):
    self.kernels, self.every = tuple(kernels), max(1, every)
    self.previous, self.steps, self.ratios = None, [], []

  def __call__(self, step, state, step_metrics=None):
    if self.previous is not None:
      self.steps.append(step)
      self.ratios.append(update_ratios(self.kernels, self.previous, state.params))
    due = (step + 1) % self.every == 0
    self.previous = copy_kernels(self.kernels, state.params) if due else None

  def series(self) -> tuple[list[int], dict]:
    """(steps, {layer: ratios over those steps})."""
    ratios = jax.device_get(self.ratios)
    return list(self.steps), {k: np.array([r[k] for r in ratios]) for k in self.kernels}


def copy_kernels(kernels, params) -> dict:
  """{layer: a copy of its kernel} (on the device: the next step donates `params`)."""
  return _copy_fn(tuple(kernels))(params)


def update_ratios(kernels, previous: dict, params) -> dict:
  """{layer: ||kernel - previous|| / ||previous||}, on the device."""
  return _ratio_fn(tuple(kernels))(previous, params)


@compiled.cached
def _copy_fn(kernels: tuple):
  return jax.jit(lambda params: {k: kernel_of(params, k) * 1 for k in kernels})


@compiled.cached
def _ratio_fn(kernels: tuple):
  def ratios(previous, params):
    return {k: _norm(kernel_of(params, k) - previous[k]) / jnp.maximum(_norm(previous[k]), 1e-30)
            for k in kernels}
  return jax.jit(ratios)
