"""MNIST-1D linear, the MNIST-1D paper's setup (presets.mnist1d; paper: 32% test)."""
from recipe_jax.config import presets


def get_config():
  return presets.mnist1d('linear')
