"""Loading a user's own model or loss given as 'package.module:name'."""
import importlib

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
