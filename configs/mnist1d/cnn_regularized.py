"""MNIST-1D cnn1d with random circular shifts of up to 5 positions, the regulariser
configs/mnist1d/compare.py points to (it closes most of the train - validation gap;
docs/reference_results.md has the numbers)."""
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d')
  c.augment.shift = 5
  return c
