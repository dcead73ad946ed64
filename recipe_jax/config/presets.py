"""Setups that several config files share, so each number lives in one place.

configs/<dataset>/<name>.py start from one of these and change only what makes them different.
"""
from recipe_jax.config import defaults


def mnist1d(model: str, stage: str = 'train'):
  """The MNIST-1D paper's setup: Adam 1e-2, batch 100, 6000 steps, constant learning rate.
  200 of the 4000 training examples are held out for validation (the paper trains on all)."""
  c = defaults.get_config()
  c.stage = stage
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05
  c.model.name = model
  c.optimizer.learning_rate = 1e-2
  c.batch_size = 100
  c.num_train_steps = 6000
  return c


def digits(model: str, stage: str = 'train'):
  """scikit-learn's 8x8 digits: Adam 1e-3, batch 64, 3000 steps, an eval every 250."""
  c = defaults.get_config()
  c.stage = stage
  c.dataset.name = 'digits'
  c.model.name = model
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 64
  c.num_train_steps = 3000
  c.eval_every_steps = 250
  return c
