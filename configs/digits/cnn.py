"""scikit-learn digits (8x8), small 2D CNN. Target: test accuracy >= 97%."""
from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.dataset.name = 'digits'
  c.model.name = 'cnn2d'
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 64
  c.num_train_steps = 3000
  c.eval_every_steps = 250
  return c
