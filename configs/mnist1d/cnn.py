"""MNIST-1D cnn1d, the MNIST-1D paper's setup (presets.mnist1d; paper: 94% test)."""
from recipe_jax.config import presets


def get_config():
  return presets.mnist1d('cnn1d')
