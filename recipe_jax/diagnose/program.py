"""The model as a program: which nonlinearity each value went through, read from the traced
computation instead of guessed from value ranges.

`read` traces one train-mode apply of the model (`jax.make_jaxpr`, the mesh's data axis bound)
with every kernel layer's input and output recorded (`model.layers`), and flattens the jaxpr
into one list of operations (calls inlined; loops, conditionals and custom-derivative calls
kept whole). In it:
- a **site** is one application of a nonlinearity as a whole function: a named `jax.nn`
  function (relu, silu, softplus, elu, glu, ...), a bare `tanh` or `logistic` (jnp.tanh,
  nn.sigmoid), an `erf`, or `max(x, 0)` written by hand. A tanh, sigmoid or erf whose output
  multiplies another activation is part of a composite function or a gate (SiLU is
  x * sigmoid(x), GELU multiplies x by 1 + tanh(...) or by an erf, GLU and
  squeeze-excitation multiply features by a sigmoid): it is named so and never judged for
  saturation, as neither SiLU nor GELU saturates;
- each site's **producer** is the kernel layer whose output reaches it (through biases and
  normalisations), so findings name the units that are dead or saturated;
- each layer's **input** is described by the sites its input passed through since the previous
  layers, seen through pooling, dropout, residual sums and attention (`linear` when none); a
  value that passed an operation the reader cannot see into (a loop's body, a callback, a
  custom-gradient call) is `identified: False`.

`evaluate` runs the flattened program (inside `on_one_device`, where the data axis exists), with
each judged site's input and output perturbed by zeros that the caller differentiates: the
gradient at a site's input against the one at its output is the share of the gradient that
its nonlinearity lets through.
"""
import dataclasses
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

from recipe_jax.engine import state as state_lib
from recipe_jax.engine.mesh import AXIS
from recipe_jax.model import layers

CAN_DIE = ('relu', 'relu6')  # an exact zero below 0: a unit can be zero for every example
SATURATES = {'tanh': 1.0, 'sigmoid': 0.25, 'hard_tanh': 1.0}  # kind -> its peak slope
# jax.nn's jitted functions appear in the jaxpr under these names
NAMED = {'relu': 'relu', 'relu6': 'relu6', 'leaky_relu': 'leaky_relu', 'elu': 'elu',
         'celu': 'celu', 'selu': 'selu', 'gelu': 'gelu', 'silu': 'silu', 'swish': 'silu',
         'softplus': 'softplus', 'sigmoid': 'sigmoid', 'log_sigmoid': 'log_sigmoid',
         'mish': 'mish', 'hard_tanh': 'hard_tanh', 'hard_sigmoid': 'hard_sigmoid',
         'hard_silu': 'hard_silu', 'hard_swish': 'hard_silu', 'glu': 'glu',
         'squareplus': 'squareplus', 'soft_sign': 'soft_sign', 'sparse_plus': 'sparse_plus',
         'sparse_sigmoid': 'sparse_sigmoid'}
# Named functions that normalise rather than activate: kept whole and seen through.
STRUCTURE = {'softmax': 'softmax', 'log_softmax': 'softmax', '_softmax': 'softmax',
             'logsumexp': 'softmax', 'standardize': 'normalisation'}
INLINED = ('jit', 'pjit', 'closed_call', 'core_call', 'remat', 'checkpoint')
REDUCTIONS = ('reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'argmax', 'argmin',
              'reduce_and', 'reduce_or', 'psum', 'pmax', 'pmin')
# ops that mix positions or features: their output is never a statistic of their input
MIXING = ('dot_general', 'conv_general_dilated', 'concatenate', 'gather', 'slice',
          'dynamic_slice', 'pad', 'reduce_window_sum', 'reduce_window_max', 'reduce_window_min',
          'reduce_window', 'cumsum')
# a value that passes these keeps its identity (scaled, shifted by constants, reshaped)
AFFINE = ('add', 'sub', 'mul', 'div', 'neg', 'convert_element_type', 'copy', 'copy_p',
          'reshape', 'broadcast_in_dim', 'squeeze', 'expand_dims', 'transpose')
# Between two layers a value may pass these and still be read: arithmetic, shapes, pooling,
# normalisation, masks, attention's products and softmax. Anything else is unknown.
KNOWN = {*AFFINE, *MIXING, *REDUCTIONS, 'square', 'sqrt', 'rsqrt', 'integer_pow', 'max', 'min',
         'exp', 'log', 'rev', 'select_n', 'clamp', 'stop_gradient', 'reduce_precision', 'abs',
         'sign', 'iota', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'and', 'or', 'not'}
MARKS = {'reduce_window_max': 'max pooling', 'reduce_window_sum': 'average pooling',
         'rsqrt': 'normalisation', 'concatenate': 'concatenation', 'exp': 'softmax'}


@dataclasses.dataclass(frozen=True)
class Literal:
  val: Any


@dataclasses.dataclass(frozen=True)
class Op:
  primitive: Any
  params: dict  # as `bind` takes them
  ins: tuple  # ints (values' ids) or Literals
  outs: tuple  # ints
  name: str | None = None  # a call's function name (jax.nn.relu: 'relu')
  site: str | None = None  # the nonlinearity this op applies, as one whole function


@dataclasses.dataclass(frozen=True)
class Site:
  name: str  # 'Dense_0 relu': the producer's units through this nonlinearity
  op: int  # its position in the program
  kind: str  # relu, tanh, gelu, silu, 'sigmoid gate', ...
  producer: str | None  # the kernel layer whose output reaches it; None: the model's input
  judged: str | None  # 'dead' (CAN_DIE), 'saturation' (SATURATES, not a gate) or None
  input: int  # the id of the value it is applied to
  output: int


@dataclasses.dataclass(eq=False)  # hashed by identity: compiled programs are cached on it
class Program:
  ops: list
  consts: dict  # {id: value}
  avals: dict  # {id: its abstract value}
  invars: list  # ids of the flattened (variables, x, dropout_key)
  outs: list  # ids of the flattened (logits, records)
  out_tree: Any
  order: list  # recorded kernel layers, in call order
  unseen: list  # kernel layers no record saw (inside a loop or a custom op)
  records: dict  # {layer: (input id, output id)}
  sites: list = dataclasses.field(default_factory=list)
  layer_inputs: dict = dataclasses.field(default_factory=dict)
  site_args: dict = dataclasses.field(default_factory=dict)  # {op: which operand is the input}

  def judged(self, what: str) -> list:
    return [s for s in self.sites if s.judged == what]


def read(model, variables, x, dropout_key) -> Program:
  """The program of one train-mode apply on `x` (only shapes and dtypes matter)."""
  def apply(variables, x, dropout_key):
    logits, collections = state_lib.apply_model(
        model, variables, x, True, rngs={'dropout': dropout_key},
        mutable=['batch_stats', layers.RECORDED])
    return logits, layers.recorded(collections.get(layers.RECORDED, {}))

  with layers.recording() as called:
    closed, shapes = jax.make_jaxpr(apply, axis_env=[(AXIS, 1)], return_shape=True)(
        variables, x, dropout_key)
  flat = _Flattener()
  invars = [flat.new(v.aval) for v in closed.jaxpr.invars]
  outs = flat.inline(closed.jaxpr, closed.consts, invars)
  out_tree = jax.tree.structure(shapes)
  _, recorded = jax.tree.unflatten(out_tree, outs)
  records = {layer: io for layer, io in recorded.items() if all(isinstance(v, int) for v in io)}
  order = [path for path in called if path in records]
  unseen = [path for path in layers.kernel_layers(variables['params']) if path not in records]
  program = Program(flat.ops, flat.consts, flat.avals, invars, outs, out_tree, order, unseen,
                    records)
  before = len(jax.tree.leaves(variables))
  _analyse(program, set(invars[before:before + len(jax.tree.leaves(x))]))
  return program


def evaluate(program: Program, variables, x, dropout_key, perturb: dict | None = None):
  """(logits, records, {site op: (input, output)}) of the program on these arrays, with
  `perturb` {site op: (added to its input, added to its output)}. Call inside
  `on_one_device`."""
  env = dict(program.consts)
  for i, value in zip(program.invars, jax.tree.leaves((variables, x, dropout_key))):
    env[i] = value
  perturb = perturb or {}
  seen = {}
  value_of = lambda a: a.val if isinstance(a, Literal) else env[a]
  for index, op in enumerate(program.ops):
    values = [value_of(a) for a in op.ins]
    arg = program.site_args.get(index, 0)  # max(0.0, x): the activation is the second
    if index in perturb:
      values[arg] = values[arg] + perturb[index][0]
    out = op.primitive.bind(*values, **op.params)
    out = list(out) if op.primitive.multiple_results else [out]
    if index in perturb:
      out[0] = out[0] + perturb[index][1]
    if op.site is not None:
      seen[index] = (values[arg], out[0])
    env.update(zip(op.outs, out))
  logits, records = jax.tree.unflatten(program.out_tree, [value_of(a) for a in program.outs])
  return logits, records, seen


def zeros_at(program: Program, sites) -> dict:
  """{site op: (zeros of its input, zeros of its output)}: what `evaluate` differentiates."""
  zeros = lambda i: np.zeros(program.avals[i].shape, program.avals[i].dtype)
  return {s.op: (zeros(s.input), zeros(s.output)) for s in sites}


class _Flattener:
  """Inlines calls into one list of ops; every value is an integer id."""

  def __init__(self):
    self.ops, self.consts, self.avals = [], {}, {}

  def new(self, aval) -> int:
    self.avals[len(self.avals)] = aval
    return len(self.avals) - 1

  def inline(self, jaxpr, consts, ins) -> list:
    env = {}
    for var, value in zip(jaxpr.constvars, consts):
      env[var] = self.new(var.aval)
      self.consts[env[var]] = value
    env.update(zip(jaxpr.invars, ins))
    read = lambda a: Literal(a.val) if isinstance(a, jex.Literal) else env[a]
    for eqn in jaxpr.eqns:
      ins_here = [read(a) for a in eqn.invars]
      name = _call_name(eqn)
      site = _site_of(eqn, name)
      callee = None if site or name in STRUCTURE else _callee(eqn)
      if callee is not None:
        outs = self.inline(*callee, ins_here)
      else:
        outs = [self.new(v.aval) for v in eqn.outvars]
        self.ops.append(Op(eqn.primitive, eqn.primitive.get_bind_params(eqn.params),
                           tuple(ins_here), tuple(outs), name, site))
      env.update(zip(eqn.outvars, outs))
    return [read(a) for a in jaxpr.outvars]


def _callee(eqn):
  """(jaxpr, consts) of a call that is inlined, else None. A custom-derivative call is kept
  whole: its derivative rule is part of the function."""
  if eqn.primitive.name not in INLINED:
    return None
  inner = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
  if inner is None:
    return None
  return (inner.jaxpr, inner.consts) if hasattr(inner, 'consts') else (inner, [])


def _call_name(eqn) -> str | None:
  """A jitted function's name, looking through custom_jvp wrappers (jax.nn.relu)."""
  primitive = eqn.primitive.name
  if primitive in ('jit', 'pjit'):
    return eqn.params.get('name')
  if primitive in ('custom_jvp_call', 'custom_vjp_call'):
    inner = eqn.params.get('call_jaxpr')
    inner = getattr(inner, 'jaxpr', inner)
    if inner is not None and len(inner.eqns) == 1:
      return _call_name(inner.eqns[0])
  return None


def _site_of(eqn, name) -> str | None:
  if name in NAMED:
    return NAMED[name]
  primitive = eqn.primitive.name
  if primitive == 'tanh':
    return 'tanh'
  if primitive == 'logistic':
    return 'sigmoid'
  if primitive in ('erf', 'erfc'):
    return 'erf'
  if primitive == 'max' and any(isinstance(a, jex.Literal) and np.all(np.asarray(a.val) == 0)
                                for a in eqn.invars):
    return 'relu?'  # a ReLU if its operand is an activation, not a variance (_analyse)
  return None


def _analyse(program: Program, x_ids: set) -> None:
  """Fills in the sites (producer, gate or not, judged) and each layer's input."""
  ops = program.ops
  made_by = {out: i for i, op in enumerate(ops) for out in op.outs}
  used_by = {}
  for i, op in enumerate(ops):
    for a in op.ins:
      if isinstance(a, int):
        used_by.setdefault(a, []).append(i)
  # Which values depend on the input x, and which of those are statistics of it (means and
  # variances over the batch or the features) rather than per-element activations.
  varies, statistic = set(x_ids), set()
  for op in ops:
    inputs = [a for a in op.ins if isinstance(a, int) and a in varies]
    if not inputs:
      continue
    varies.update(op.outs)
    name = op.primitive.name
    if (name in REDUCTIONS and not _pools(op, program.avals)) or (
        name not in REDUCTIONS and all(a in statistic for a in inputs)):
      statistic.update(op.outs)
  layer_outputs = {z: layer for layer, (_, z) in program.records.items()}
  graph = _Graph(ops, program.avals, made_by, used_by, varies, statistic)
  site_at = {}
  for i, op in enumerate(ops):
    if op.site is None:
      continue
    source = next((a for a in op.ins if isinstance(a, int) and a in varies), None)
    if source is None or (op.site == 'relu?' and source in statistic):
      ops[i] = dataclasses.replace(op, site=None)  # a constant's, or a variance clamped at 0
      continue
    kind = 'relu' if op.site == 'relu?' else op.site
    if kind in ('tanh', 'sigmoid', 'erf'):
      multiplier, gate = graph.gate_multiplier(op.outs[0])
      if multiplier is not None:
        graph.gates.add(gate)
        kind = graph.composite(kind, source, multiplier)
    judged = 'dead' if kind in CAN_DIE else 'saturation' if kind in SATURATES else None
    producer = graph.nearest(source, layer_outputs)
    name = f'{producer or "input"} {kind}'
    taken = sum(1 for s in program.sites if s.name.split(' #')[0] == name)
    site = Site(f'{name} #{taken + 1}' if taken else name, i, kind, producer, judged, source,
                op.outs[0])
    ops[i] = dataclasses.replace(op, site=kind)
    program.sites.append(site)
    program.site_args[i] = list(op.ins).index(source)
    site_at[op.outs[0]] = site
  for layer in program.order:
    program.layer_inputs[layer] = graph.describe(program.records[layer][0], layer_outputs,
                                                 site_at, x_ids)


def _pools(op, avals) -> bool:
  """A reduction over positions, neither the batch axis nor the features: pooling."""
  if op.primitive.name not in ('reduce_sum', 'reduce_max') or not isinstance(op.ins[0], int):
    return False
  axes, rank = op.params.get('axes', ()), len(avals[op.ins[0]].shape)
  return 0 not in axes and rank - 1 not in axes


class _Graph:
  """Walks over the flattened program's values."""

  def __init__(self, ops, avals, made_by, used_by, varies, statistic):
    self.ops, self.avals, self.made_by, self.used_by = ops, avals, made_by, used_by
    self.varies, self.statistic = varies, statistic
    self.gates = set()  # the ops where a gate multiplies what it gates

  def inputs(self, value) -> list:
    i = self.made_by.get(value)
    return [] if i is None else [a for a in self.ops[i].ins if isinstance(a, int)]

  def gate_multiplier(self, value):
    """The activation `value` (a sigmoid's, tanh's or erf's output) multiplies after affine
    steps (adding or scaling by constants), or None when it is used as features itself."""
    frontier, seen = [value], set()
    while frontier:
      v = frontier.pop()
      if v in seen:
        continue
      seen.add(v)
      for i in self.used_by.get(v, []):
        op = self.ops[i]
        others = [a for a in op.ins if isinstance(a, int) and a != v and a in self.varies]
        name = op.primitive.name
        if name == 'mul' and others and not all(a in self.statistic for a in others):
          return others[0], i
        if name in AFFINE and not others:
          frontier.extend(op.outs)
    return None, None

  def root(self, value):
    """`value` before conversions, reshapes and scaling or shifting by constants."""
    while True:
      i = self.made_by.get(value)
      if i is None or self.ops[i].primitive.name not in AFFINE or self.ops[i].site:
        return value
      varying = [a for a in self.inputs(value) if a in self.varies]
      if len(varying) != 1:
        return value
      value = varying[0]

  def composite(self, kind, source, multiplier) -> str:
    """What a gated tanh, sigmoid or erf computes: SiLU (x * sigmoid(x)), GELU (x times an
    erf, or 1 + tanh of a cubic), else a gate (GLU, squeeze-excitation)."""
    if kind == 'erf':
      return 'gelu'
    same = self.root(multiplier) == self.root(source)
    if kind == 'sigmoid':
      return 'silu' if same else 'sigmoid gate'
    frontier = [source]
    for _ in range(6):  # tanh-GELU: tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3))
      frontier = [a for v in frontier for a in self.inputs(v)]
      if any(self.ops[self.made_by[a]].primitive.name == 'integer_pow'
             for a in frontier if a in self.made_by):
        return 'gelu'
    return 'tanh gate'

  def nearest(self, value, layer_outputs) -> str | None:
    """The kernel layer whose output is nearest upstream of `value`, or None (the input)."""
    frontier, seen = [value], set()
    while frontier:
      nxt = []
      for v in frontier:
        if v in seen or v not in self.varies:
          continue
        seen.add(v)
        if v in layer_outputs:
          return layer_outputs[v]
        nxt.extend(self.inputs(v))
      frontier = nxt
    return None

  def describe(self, value, layer_outputs, site_at, x_ids) -> dict:
    """What a layer's input went through since the layers before it: the sites (its
    nonlinearity), the structure between, and operations the reader cannot see into."""
    kinds, names, through, unknown, reads_input = [], [], [], [], False
    frontier, seen = [value], set()
    while frontier:
      v = frontier.pop()
      if v in seen or v not in self.varies:
        continue
      seen.add(v)
      if v in x_ids:
        reads_input = True
        continue
      if v in site_at:
        kinds.append(site_at[v].kind)
        names.append(site_at[v].name)
        continue
      if v in layer_outputs:  # the previous layer's own output: nothing between (linear)
        continue
      i = self.made_by.get(v)
      if i is None:
        continue
      op = self.ops[i]
      name = op.primitive.name
      varying = [a for a in op.ins if isinstance(a, int) and a in self.varies]
      stats = [a for a in varying if a in self.statistic]
      varying = [a for a in varying if a not in self.statistic]  # means and variances: not
      if stats and varying:                                     # the data's path
        through.append('normalisation')
      if i in self.gates:
        pass  # part of its site's function (GELU's or SiLU's product)
      elif op.name in STRUCTURE:
        through.append(STRUCTURE[op.name])
      elif name not in KNOWN:
        unknown.append(op.name or name)
        continue
      elif name == 'select_n' and op.ins[0] not in self.varies:
        through.append('dropout')  # a mask drawn from a key, not from the data
      elif name == 'add' and len(varying) == 2:
        through.append('residual sum')
      elif name == 'dot_general' and len(varying) == 2:
        through.append('attention')
      elif name == 'mul' and len(set(varying)) == 2:
        through.append('product')
      elif name in ('reduce_sum', 'reduce_max') and _pools(op, self.avals):
        through.append('mean pooling' if name == 'reduce_sum' else 'max pooling')
      elif name in MARKS:
        through.append(MARKS[name])
      frontier.extend(varying)
    if 'softmax' in through:  # its normalisation is the softmax's own
      through = [t for t in through if t != 'normalisation']
    kinds = sorted(set(kinds))
    kind = ' + '.join(kinds) if kinds else 'input' if reads_input else 'linear'
    return {'kind': kind, 'through': list(dict.fromkeys(through)), 'sites': sorted(set(names)),
            'unknown': sorted(set(unknown)), 'identified': not unknown}

