"""MNIST-1D cnn1d, the MNIST-1D paper's setup (Adam 1e-2, batch 100, 6000 steps; paper: 94% test)."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05  # 200 of the 4000: the paper trains on all 4000
  c.model.name = 'cnn1d'
  c.optimizer.learning_rate = 1e-2
  c.batch_size = 100
  c.num_train_steps = 6000
  return c
