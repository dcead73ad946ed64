"""A defect generator: classes of training bugs, each at several magnitudes (from near the
threshold that catches it to extreme), planted into any model of the clean zoo
(`helpers.zoo`), into the loss, into the data or into the config. scripts/diagnosis_rates.py
samples classes x magnitudes x architectures x seeds from it.

A class says which task it belongs to (`task`: classification today; the language-model and
regression issues add theirs to the same registry), where it is planted (`where`), which
architectures it applies to (`archs`: 'any', 'relu' or 'tanh'), and `named`: the
(check, words) pairs of which one must be a non-PASS verdict containing the words for the run
to count as diagnosed. `clean` variants are not bugs (a loss scaled by 1/C, soft targets):
they must raise no FAIL, only WARNs.

Model defects wrap a zoo model in `Planted`, which changes its initial parameters (`init`) or
its computation (`__call__`); the pipeline loads it by name like any user model
(`register` puts a factory into this module under that name).
"""
import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recipe_jax.model import losses


@dataclasses.dataclass(frozen=True)
class Defect:
  task: str
  where: str  # model | loss | data | config
  magnitudes: tuple
  named: tuple  # ((check, words), ...): one must be a non-PASS verdict with the words
  archs: str = 'any'  # a group of ARCHS
  clean: bool = False  # not a bug: must stay free of FAILs


CLASSIFICATION = {
    'init scaled up (ReLU)': Defect('classification', 'model', (1.5, 2.0, 4.0, 8.0), (
        ('diagnosis', 'exploding gradients'), ('diagnosis', 'initial logits too large'),
        ('gradient_flow', 'exploding'), ('loss_at_init', 'too high'),
        ('loss_at_init', 'initial logits are not small')), 'relu'),
    'init scaled up (tanh)': Defect('classification', 'model', (2.0, 4.0, 8.0), (
        ('saturation', 'saturated units'), ('diagnosis', 'saturated units')), 'tanh'),
    'negative first bias': Defect('classification', 'model', (0.5, 1.5, 3.0), (
        ('dead_units', 'negative bias'), ('diagnosis', 'dying ReLU')), 'relu'),
    'copied units': Defect('classification', 'model', (0.6, 1.0), (
        ('symmetric_init', 'symmetric init'), ('diagnosis', 'symmetric init')), 'linen'),
    'squashed output': Defect('classification', 'model', (1.0, 2.0, 3.0), (
        ('diagnosis', 'logits squashed'),)),
    'learning rate too small': Defect('classification', 'config', (1e-2, 1e-3, 1e-5), (
        ('diagnosis', 'learning rate far too small'),)),
    'learning rate too large': Defect('classification', 'config', (10.0, 100.0, 1000.0), (
        ('diagnosis', 'learning rate too large'), ('decreasing_loss', 'NaN/Inf'),
        ('gradients', 'NaN/Inf'))),
    'targets shifted in the loss': Defect('classification', 'loss', (0.3, 0.6, 1.0), (
        ('diagnosis', 'targets differ from the labels'),
        ('loss_signature', 'other classes than the labels'))),
    'labels rolled in the loss': Defect('classification', 'loss', (1,), (
        ('diagnosis', 'targets not a function of the inputs'),
        ('loss_signature', 'other examples'))),
    'sign of the loss flipped': Defect('classification', 'loss', (1,), (
        ('loss_signature', 'a sign flipped'), ('diagnosis', 'loss maximised'))),
    'labels shuffled in the data': Defect('classification', 'data', (0.5, 1.0), (
        ('diagnosis', 'labels do not go with the inputs'),)),
    'inputs not normalised': Defect('classification', 'data', (5.0, 50.0, 255.0), (
        ('inputs_before_net', 'unnormalised'), ('inputs_before_net', 'not standardised'),
        ('diagnosis', 'inputs not normalised'))),
    'inputs scaled away': Defect('classification', 'model', (1e-2, 0.0), (
        ('diagnosis', 'inputs do not reach the loss'),
        ('dumb_baselines', 'does not use its inputs'))),
    'batch mean subtracted': Defect('classification', 'model', (0.1, 1.0), (
        ('batch_dependency', 'mixes examples'), ('diagnosis', 'examples mixed'))),
    'dropout mask fixed in eval': Defect('classification', 'model', (0.1, 0.5), (
        ('eval_consistency', 'position in the batch'),
        ('diagnosis', 'outputs not a function of the example'))),
    # not bugs: a FAIL on these is a false alarm
    'loss averaged over the classes': Defect('classification', 'loss', (1,), (
        ('loss_signature', 'a mean over the'),), clean=True),
    'soft targets in the loss': Defect('classification', 'loss', (0.1,), (
        ('loss_signature', 'soft targets'),), clean=True),
}
DEFECTS = {'classification': CLASSIFICATION}
DEFECTS_BY_NAME = {name: d for task in DEFECTS.values() for name, d in task.items()}

# The zoo models each class is planted in: those the thresholds were tuned on, and the zoo's
# held-out ones (zoo.HELD_OUT, never tuned on). 'relu': the first layer feeds a ReLU and the
# parameter tree's order is the call order (the init defects find layers by it); 'linen': any
# Linen model whose last kernel in that order is the head.
ARCHS = {
    'relu': {'tuned': ('ReluMLP', 'GapDropoutCNN', 'FlaxExampleCNN', 'DropoutMLP'),
             'held_out': ('KerasCNN',)},
    'tanh': {'tuned': ('TanhMLP', 'LeNetTanh'), 'held_out': ()},
    'linen': {'tuned': ('ReluMLP', 'GapDropoutCNN', 'ResidualMLP', 'TanhMLP'),
              'held_out': ('KerasCNN', 'SwiGLUMLP')},
    'any': {'tuned': ('ReluMLP', 'GapDropoutCNN', 'ResidualMLP', 'BatchNormCNN', 'TanhMLP',
                      'GeluLayerNormMLP', 'TransformerClassifier', 'NnxReluMLP'),
            'held_out': ('KerasCNN', 'SwiGLUMLP', 'ConvNeXtCNN', 'NnxAttention', 'Conv1DTokens')},
}


class Planted(nn.Module):
  """`inner` with a model defect: `init` changes the initial parameters, `__call__` the
  computation."""
  inner: Any
  defect: str
  magnitude: float

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.defect == 'inputs scaled away':
      x = x * self.magnitude
    if self.defect == 'batch mean subtracted':
      x = x - self.magnitude * x.mean(axis=0, keepdims=True)
    logits = self.inner(x, train=train)
    if self.defect == 'squashed output':  # probabilities (1), or a tanh bounded at +-(m - 1)
      if self.magnitude == 1:
        return jax.nn.softmax(logits)
      return (self.magnitude - 1) * jnp.tanh(logits)
    if self.defect == 'dropout mask fixed in eval' and not train:
      keep = jax.random.bernoulli(jax.random.key(0), 1 - self.magnitude,
                                  (4096, logits.shape[-1]))[:len(logits)]
      logits = jnp.where(keep, logits, 0.0)
    return logits

  def init(self, rngs, *args, **kwargs):
    variables = super().init(rngs, *args, **kwargs)
    params = _changed(variables['params'], self.defect, self.magnitude)
    return {**variables, 'params': params}


def _kernels(params) -> list:
  """Paths of every kernel, in the parameter tree's order."""
  return [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
          if getattr(path[-1], 'key', None) == 'kernel']


def _changed(params, defect: str, magnitude: float):
  kernels = _kernels(params)
  hidden = kernels[:-1] if len(kernels) > 1 else kernels

  columns, rows = {}, {}  # kernel -> how many of its first units (columns) / inputs (rows)
  if defect == 'copied units':  # are copies of the first: a constant init for those units
    for path, consumer in zip(hidden, kernels[1:]):
      units = _leaf(params, path).shape[-1]
      columns[path] = int(round(magnitude * units))
      if _leaf(params, consumer).shape[-2] == units:  # it reads these units directly
        rows[consumer] = columns[path]

  def change(path, value):
    if defect in ('init scaled up (ReLU)', 'init scaled up (tanh)') and path in kernels:
      return value * magnitude
    if path in columns:
      value = value.at[..., :columns[path]].set(value[..., :1])
    if path in rows:
      value = value.at[..., :rows[path], :].set(value[..., :1, :])
    if path in columns or path in rows:
      return value
    if defect == 'negative first bias' and getattr(path[-1], 'key', None) == 'bias' and \
        path[:-1] == kernels[0][:-1]:
      return jnp.full_like(value, -magnitude)
    return value
  return jax.tree_util.tree_map_with_path(change, params)


def _leaf(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def register(module, name: str, factory: Callable) -> str:
  """Puts `factory` into `module` under a name the config can load; returns the name."""
  safe = re.sub(r'\W+', '_', name).strip('_')
  setattr(module, safe, factory)
  return f'{module.__name__}:{safe}'


def planted_model(module, inner_name: str, defect: str, magnitude: float) -> str:
  """The config's model.name for zoo model `inner_name` (its own model.name) with a model
  defect."""
  from recipe_jax.model import user_code, nnx_models
  inner_factory = user_code.load(inner_name, 'model')

  def factory(num_classes):
    if nnx_models.is_nnx_factory(inner_factory):
      inner = nnx_models.NNXModel(inner_factory, num_classes)
    else:
      inner = inner_factory(num_classes=num_classes)
    return Planted(inner, defect, magnitude)
  return register(module, f'planted {inner_name} {defect} {magnitude}', factory)


def planted_loss(module, defect: str, magnitude: float) -> str:
  if defect == 'targets shifted in the loss':
    def loss(logits, labels):
      classes = logits.shape[-1]
      moved = jnp.arange(classes) < magnitude * classes
      return losses.cross_entropy(logits, jnp.where(moved[labels], (labels + 1) % classes,
                                                    labels))
  elif defect == 'labels rolled in the loss':
    def loss(logits, labels):
      return losses.cross_entropy(logits, jnp.roll(labels, 1))
  elif defect == 'sign of the loss flipped':
    def loss(logits, labels):
      return -losses.cross_entropy(logits, labels)
  elif defect == 'loss averaged over the classes':
    def loss(logits, labels):
      return -(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, logits.shape[-1])).mean(-1)
  elif defect == 'soft targets in the loss':
    def loss(logits, labels):
      classes = logits.shape[-1]
      targets = (1 - magnitude) * jax.nn.one_hot(labels, classes) + magnitude / classes
      return -(jax.nn.log_softmax(logits) * targets).sum(-1)
  else:
    raise ValueError(defect)
  return register(module, f'loss {defect} {magnitude}', loss)


def planted_data(arrays: dict, defect: str, magnitude: float, seed: int) -> dict:
  """A copy of an .npz's arrays with a data defect."""
  arrays = dict(arrays)
  rng = np.random.default_rng(seed)
  if defect == 'labels shuffled in the data':
    y = arrays['y_train'].copy()
    rows = rng.choice(len(y), int(magnitude * len(y)), replace=False)
    y[rows] = y[rng.permutation(rows)]
    arrays['y_train'] = y
  elif defect == 'inputs not normalised':
    for split in ('x_train', 'x_test'):
      x = arrays[split]
      arrays[split] = ((x - x.min()) / (x.max() - x.min()) * magnitude).astype(np.float32)
  else:
    raise ValueError(defect)
  return arrays
