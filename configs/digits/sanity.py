"""Sanity checks (recipe step 2) for the digits CNN with its training config's settings."""
from recipe_jax.config import presets


def get_config():
  return presets.digits('cnn2d', stage='sanity')
