"""Small helpers on parameter trees (nested dicts of arrays)."""
import hashlib

import jax
import numpy as np


def params_sha256(params) -> str:
  """Hash of every parameter leaf's bytes in tree order: equal hashes mean bit-identical params."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


def get_leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def replace_leaf(tree, path, value):
  """A copy of the nested dict `tree` with the leaf at `path` replaced."""
  if not path:
    return value
  return {**tree, path[0]: replace_leaf(tree[path[0]], path[1:], value)}
