"""Inspect the digits data (recipe step 1): statistics, duplicates, leakage, pictures. No training."""
from recipe_jax.config import presets


def get_config():
  return presets.digits('cnn2d', stage='inspect')
