"""Is more data worth it for the regularised MNIST-1D CNN? Nested subsets of 1/8 to all of the
3800 training examples, 2 seeds each, and a power-law fit of the validation error."""
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='data_scaling')
  c.augment.shift = 5
  c.data_scaling.seeds = 2
  return c
