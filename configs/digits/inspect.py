"""Inspect the digits data (recipe step 1): statistics, duplicates, leakage, pictures. No training."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'inspect'
  c.dataset.name = 'digits'
  return c
