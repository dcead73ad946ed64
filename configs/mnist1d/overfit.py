"""Overfit (recipe step 3): can the MNIST-1D CNN fit its training set with Adam 3e-4?"""
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='overfit')
  c.optimizer.learning_rate = 3e-4  # the recipe's trusted Adam default, constant
  return c
