"""Sanity checks (recipe step 2) for the MNIST-1D CNN with its training config's settings."""
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='sanity')
  c.human_baseline = 0.96  # the MNIST-1D paper's estimate of human accuracy
  return c
