"""MNIST-1D cnn1d with the regulariser the compare stage chose: random circular shifts of up to
5 positions (configs/mnist1d/compare.py: +2.3% validation accuracy, beyond seed noise)."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05
  c.model.name = 'cnn1d'
  c.optimizer.learning_rate = 1e-2
  c.batch_size = 100
  c.num_train_steps = 6000
  c.augment.shift = 5
  return c
