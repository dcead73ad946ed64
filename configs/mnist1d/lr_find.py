"""LR range test (recipe step 3) for the MNIST-1D CNN with Adam, batch 100."""
from recipe_jax.config import presets


def get_config():
  return presets.mnist1d('cnn1d', stage='lr_find')  # the range test replaces the learning rate
