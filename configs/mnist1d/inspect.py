"""Inspect the mnist1d data (recipe step 1): statistics, duplicates, leakage, pictures. No training."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'inspect'
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05  # the split the mnist1d training configs use
  return c
