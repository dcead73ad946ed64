"""Inspect the mnist1d data (recipe step 1): statistics, duplicates, leakage, pictures. No training."""
from recipe_jax.config import presets


def get_config():
  return presets.mnist1d('cnn1d', stage='inspect')  # the split the mnist1d configs train on
