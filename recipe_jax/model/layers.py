"""What flows through a model's layers, seen from outside the user's code.

A layer is a module that owns a kernel (Dense, Conv, attention projections, NNX's Linear and
Conv). While `recording()` is on, applying a model records each layer's input and output:
Linen modules through `nn.intercept_methods` (into the `RECORDED` collection, so the records
leave a jitted apply as outputs), NNX modules through the bridge (`nnx_models`). Layers inside
a lifted loop (`nn.scan`, e.g. an RNN's cell) are not recorded; `unseen` names them.
"""
import contextlib
import contextvars

import flax.linen as nn

RECORDED = 'recorded_layers'  # the Linen collection the records go to
KERNEL_NAMES = ('kernel', 'embedding')
_call_order = contextvars.ContextVar('recording_layers', default=None)


def owns_kernel(params) -> bool:
  """Whether a module's own parameters (not its submodules') include a kernel."""
  return any(name in KERNEL_NAMES and not hasattr(value, 'items')
             for name, value in params.items())


def kernel_layers(params) -> list[str]:
  """Paths ('Dense_0', 'block_0/MlpBlock/Dense_1', 'nnx/conv1') of the modules that own a
  kernel, in the parameter tree's order."""
  found = []

  def walk(tree, path):
    if owns_kernel(tree):
      found.append('/'.join(path))
    for key, value in tree.items():
      if hasattr(value, 'items'):
        walk(value, (*path, str(key)))
  walk(params, ())
  return found


def is_recording() -> bool:
  return _call_order.get() is not None


def note_call(path: str) -> None:
  """Appends a recorded layer's path to the call order (once, at trace time)."""
  order = _call_order.get()
  if order is not None and path not in order:
    order.append(path)


@contextlib.contextmanager
def recording():
  """Yields the list of recorded layer paths in the order the model called them (filled
  while a model is traced)."""
  order = []
  token = _call_order.set(order)
  try:
    with nn.intercept_methods(_record_linen_layer):
      yield order
  finally:
    _call_order.reset(token)


def _record_linen_layer(next_fun, args, kwargs, context):
  out = next_fun(*args, **kwargs)
  module = context.module
  x = args[0] if args else next(iter(kwargs.values()), None)  # the input, by position or name
  if (context.method_name == '__call__' and hasattr(x, 'shape')
      and owns_kernel(module.variables.get('params', {}))):
    path = '/'.join(str(p) for p in module.scope.path)
    module.sow(RECORDED, 'layer', (x, out))
    note_call(path)
  return out


def record_nnx_layers(module, call, prefix: str):
  """`call()` (which applies the NNX `module`) with the input and output of each of its
  layers recorded: ({path: (input, output)}, the call's result)."""
  from flax import nnx
  paths = {id(m): '/'.join([prefix, *map(str, path)])
           for path, m in nnx.iter_modules(module)
           if any(isinstance(getattr(m, name, None), nnx.Param) for name in KERNEL_NAMES)}
  records, originals = {}, {}
  for m in nnx.iter_modules(module):
    cls = type(m[1])
    if id(m[1]) in paths and cls not in originals:
      originals[cls] = cls.__call__

  def recorder(original):
    def call_and_record(self, *args, **kwargs):
      out = original(self, *args, **kwargs)
      path = paths.get(id(self))
      x = args[0] if args else next(iter(kwargs.values()), None)
      if path is not None and path not in records and hasattr(x, 'shape'):
        records[path] = (x, out)
        note_call(path)
      return out
    return call_and_record
  try:
    for cls, original in originals.items():
      cls.__call__ = recorder(original)
    result = call()
  finally:
    for cls, original in originals.items():
      cls.__call__ = original
  return records, result


def recorded(collection) -> dict:
  """{layer path: (input, output)} from an apply's `RECORDED` collection."""
  found = {}

  def walk(tree, path):
    for key, value in tree.items():
      if key == 'layer':
        found['/'.join(path)] = value[0]  # a layer called twice: its first call
      elif key == 'nnx_layers':
        found.update(value[0])
      elif hasattr(value, 'items'):
        walk(value, (*path, str(key)))
  walk(collection, ())
  return found
