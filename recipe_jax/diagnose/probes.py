"""Looking inside the net ("visualize the activations at each layer"): per-layer measurements
on one batch, for any model, with no change to the user's code.

`measure` applies the model in train mode on one batch with every layer's input and output
recorded (`model.layers`) and takes the gradient of the loss. For each layer that owns a
kernel, in the order the model calls them, it returns:
- the activation entering it: the fraction of its features that are zero for every example
  (dead ReLU units), the fractions saturated as a sigmoid (< 0.01 or > 0.99) or a tanh
  (|a| > 0.99) would be, its mean, std and histogram;
- which nonlinearity made that input from the previous layer's output (relu, sigmoid, tanh,
  gelu, ... matched element for element), and that output's statistics;
- the kernel's gradient and weight norms.
The sanity stage reads them at init and after its short run; the training monitor at every
eval. `kinds`, `dead_units`, `saturation`, `symmetric_units` and `gradient_flow` turn them
into findings that name the layer.
"""
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax.engine import compiled
from recipe_jax.engine import state as state_lib
from recipe_jax.model import layers

HISTOGRAM_BINS = 30
EXAMPLES = 64  # every probe batch is this many rows: sanity and each run's monitor share a program
# Nonlinearities recognised between one layer's output and the next layer's input.
NONLINEARITIES = {
    'identity': lambda z: z,
    'relu': jax.nn.relu,
    'leaky_relu': jax.nn.leaky_relu,
    'elu': jax.nn.elu,
    'gelu': lambda z: jax.nn.gelu(z, approximate=False),
    'gelu (tanh)': lambda z: jax.nn.gelu(z, approximate=True),
    'silu': jax.nn.silu,
    'softplus': jax.nn.softplus,
    'sigmoid': jax.nn.sigmoid,
    'tanh': jnp.tanh,
}
RELU_LIKE = ('relu', 'relu-like')
SIGMOID_LIKE = ('sigmoid', 'sigmoid-like')
TANH_LIKE = ('tanh', 'tanh-like')
MATCH_TOLERANCE = 1e-3  # relative: float32 and bfloat16 both match well inside it


def layer_order(model, variables, x, dropout_key) -> tuple[list[str], list[str]]:
  """(the kernel layers in the order the model calls them, the kernel layers it owns but no
  record saw: inside a lifted loop or a custom op). Traced only, nothing runs; a function of
  the model and the shapes alone, so each run of a stage (and the next stage) asks once."""
  spec = lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype)
  leaves, tree = jax.tree.flatten(jax.tree.map(spec, variables))
  example = jax.ShapeDtypeStruct((EXAMPLES, *np.shape(x)[1:]), x.dtype)
  order, unseen = _layer_order(model, tree, tuple(leaves), example, spec(dropout_key))
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


def measure(model, loss_fn, order: list[str], kernels: list[str], params, batch_stats, x, y,
            dropout_key) -> dict:
  """Per-layer measurements on the first `EXAMPLES` rows of a batch (host numpy). `order`: the
  recorded layers in call order (`layer_order`); `kernels`: the layers whose gradient and
  weight norms are wanted."""
  fn = _measure_fn(model, loss_fn, tuple(order), tuple(kernels))
  rows = np.arange(EXAMPLES) % len(x)  # fewer rows are cycled: a dead unit stays dead
  return jax.device_get(fn(params, batch_stats, np.asarray(x)[rows], np.asarray(y)[rows],
                           dropout_key))


def leaf(tree, path: str):
  for key in path.split('/'):
    if key:
      tree = tree[key]
  return tree


def kernel_of(params, layer: str):
  own = leaf(params, layer)
  return next(own[name] for name in layers.KERNEL_NAMES if name in own)


def _input_stats(a):
  a = a.astype(jnp.float32)
  rows = a.reshape(-1, a.shape[-1])
  low, high = jnp.min(a), jnp.max(a)
  return {
      'dead_fraction': 1.0 - jnp.mean(jnp.any(rows != 0, axis=0)),
      'zero_fraction': jnp.mean(a == 0),
      'sigmoid_saturated': jnp.mean((a < 0.01) | (a > 0.99)),
      'tanh_saturated': jnp.mean(jnp.abs(a) > 0.99),
      'min': low, 'max': high, 'mean': jnp.mean(a), 'std': jnp.std(a),
      'histogram': jnp.histogram(a, HISTOGRAM_BINS, (low, jnp.maximum(high, low + 1e-6)))[0],
  }


def _output_stats(z):
  z = z.astype(jnp.float32)
  rows = z.reshape(-1, z.shape[-1])
  return {'nonpositive_units': jnp.mean(jnp.all(rows <= 0, axis=0)),
          'mean': jnp.mean(z), 'std': jnp.std(z), 'units': z.shape[-1]}


def _match_errors(a, z):
  """Relative error of `a` against each nonlinearity of `z`, element for element (inf when
  their sizes differ: a pooling or a residual sum in between)."""
  if a.size != z.size:
    return {name: jnp.inf for name in NONLINEARITIES}
  a, z = a.astype(jnp.float32).reshape(-1), z.astype(jnp.float32).reshape(-1)
  scale = jnp.max(jnp.abs(a)) + 1e-12
  return {name: jnp.max(jnp.abs(a - f(z))) / scale for name, f in NONLINEARITIES.items()}


@compiled.cached
def _measure_fn(model, loss_fn, order: tuple, kernels: tuple):
  def measured(params, batch_stats, x, y, dropout_key):
    def loss_and_records(params):
      logits, collections = state_lib.on_one_device(state_lib.apply_model)(
          model, {'params': params, 'batch_stats': batch_stats}, x, True,
          rngs={'dropout': dropout_key}, mutable=['batch_stats', layers.RECORDED])
      return loss_fn(logits, y).mean(), layers.recorded(collections.get(layers.RECORDED, {}))
    with layers.recording():
      (loss, records), grads = jax.value_and_grad(loss_and_records, has_aux=True)(params)
    activations = {}
    for i, path in enumerate(order):
      if path not in records:
        continue
      a, z = records[path]
      activations[path] = {'input': _input_stats(a), 'output': _output_stats(z)}
      previous = order[i - 1] if i else None
      if previous in records:
        activations[path]['from_previous'] = _match_errors(a, records[previous][1])
    return {'loss': loss, 'activations': activations,
            'grad_norm': {k: _norm(kernel_of(grads, k)) for k in kernels},
            'weight_norm': {k: _norm(kernel_of(params, k)) for k in kernels}}
  return jax.jit(measured)


def _norm(t):
  return jnp.sqrt(jnp.sum(jnp.square(t.astype(jnp.float32))))


def saturated_fraction(input_stats: dict, kind: str):
  """The saturated fraction of a layer's input as its kind would saturate (sigmoid-like or
  tanh-like; `_input_stats` measures both), or None for other kinds."""
  if kind in SIGMOID_LIKE:
    return input_stats['sigmoid_saturated']
  if kind in TANH_LIKE:
    return input_stats['tanh_saturated']
  return None


def kinds(measured: dict, order: list[str]) -> dict:
  """{layer: what made its input}: a nonlinearity of the previous layer's output when one
  matches element for element, else a guess from the values ('relu-like': non-negative with
  exact zeros; 'sigmoid-like': inside (0, 1); 'tanh-like': inside (-1, 1); 'constant': one
  value for every example and feature); the first layer's input is the data."""
  found = {}
  for i, path in enumerate(order):
    stats = measured['activations'].get(path)
    if stats is None:
      continue
    if i == 0:
      found[path] = 'input'
      continue
    errors = {k: float(v) for k, v in stats.get('from_previous', {}).items()}
    best = min(errors, key=errors.get) if errors else None
    if best is not None and errors[best] < MATCH_TOLERANCE:
      found[path] = best
      continue
    a = stats['input']
    if a['max'] == a['min']:
      found[path] = 'constant'  # the same value for every example: nothing flows through
    elif a['min'] >= 0 and a['zero_fraction'] >= 0.01:
      found[path] = 'relu-like'
    elif a['min'] > 0 and a['max'] < 1:
      found[path] = 'sigmoid-like'
    elif a['min'] > -1 and a['max'] < 1:
      found[path] = 'tanh-like'
    else:
      found[path] = 'unknown'
  return found


def producer(order: list[str], layer: str) -> str | None:
  """The layer called before `layer` (whose output, through a nonlinearity, may be its input)."""
  i = order.index(layer)
  return order[i - 1] if i else None


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
