"""Recipe step 6 on MNIST-1D: an ensemble of 5 regularised CNNs (configs/mnist1d/cnn_regularized.py,
seeds 0-4), SWA and EMA of the best one, test-time augmentation, and a student a third as wide (width 8 of 25)
distilled from the ensemble. docs/step6_squeeze.md has the numbers."""
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='squeeze')
  c.augment.shift = 5
  c.squeeze.members = 'seeds:5'
  c.squeeze.student = '{"model.width": 8}'
  return c
