"""Overfit (recipe step 3): can the MNIST-1D CNN fit its training set with Adam 3e-4?"""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'overfit'
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05
  c.model.name = 'cnn1d'
  c.batch_size = 100
  c.num_train_steps = 6000  # the optimizer stays at the trusted defaults: Adam 3e-4, constant
  return c
