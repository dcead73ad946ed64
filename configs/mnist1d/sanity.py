"""Sanity checks (recipe step 2) for the MNIST-1D CNN with its training config's settings."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'sanity'
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05
  c.model.name = 'cnn1d'
  c.optimizer.learning_rate = 1e-2
  c.batch_size = 100
  c.human_baseline = 0.96  # the MNIST-1D paper's estimate of human accuracy
  return c
