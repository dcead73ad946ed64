"""Sanity checks (recipe step 2) for the digits CNN with its training config's settings."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'sanity'
  c.dataset.name = 'digits'
  c.model.name = 'cnn2d'
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 64
  return c
