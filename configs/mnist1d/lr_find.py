"""LR range test (recipe step 3) for the MNIST-1D CNN with Adam, batch 100."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'lr_find'
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05
  c.model.name = 'cnn1d'
  c.batch_size = 100
  return c
