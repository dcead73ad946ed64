"""Loading a user's own model or loss given as 'package.module:name', and naming what went
wrong when it fails."""
import contextlib
import importlib

import flax.errors

from recipe_jax.errors import UserError


def load(path: str, kind: str):
  """The callable named by `path`, or a UserError saying what is wrong with it."""
  if ':' not in path:
    raise UserError(f"unknown {kind} '{path}'; give a built-in name or 'package.module:name'")
  module_name, _, attr = path.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f"{kind} '{path}': cannot import module '{module_name}' ({e})") from None
  if not callable(getattr(module, attr, None)):
    raise UserError(f"{kind} '{path}': module '{module_name}' has no callable '{attr}'")
  return getattr(module, attr)


@contextlib.contextmanager
def phase(what: str):
  """Tags an exception raised inside with what the model was doing ('at init', 'in eval mode',
  'in train mode'), so the error a user sees can say so (see `describe_failure`)."""
  try:
    yield
  except Exception as e:
    if not hasattr(e, 'recipe_jax_phase'):
      e.recipe_jax_phase = what
    raise


def is_user_code(name: str) -> bool:
  return ':' in name


def one_line(e: BaseException) -> str:
  """The exception's first line, with plain words for the mistakes users make most."""
  first = (str(e).strip().splitlines() or [''])[0].split(' (https://')[0]
  text = f'{type(e).__name__}: {first}' if first else type(e).__name__
  if isinstance(e, flax.errors.ModifyScopeVariableError):
    text = ('the model changes its variables in eval mode (BatchNorm must use its running '
            'averages in eval: use_running_average=not train) - ' + text)
  return text


def describe_failure(e: BaseException, model_name: str, loss_name: str) -> str:
  """"model 'pkg:Factory' failed in eval mode: ..." for an exception tagged by `phase`, else
  the exception's one line."""
  if not hasattr(e, 'recipe_jax_phase'):
    return one_line(e)
  what = f"model '{model_name}'"
  if is_user_code(loss_name):
    what += f" (with loss '{loss_name}')"
  return f'{what} failed {e.recipe_jax_phase}: {one_line(e)}'
