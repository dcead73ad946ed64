"""scikit-learn digits (8x8), MLP. Target: test accuracy >= 97%."""
from recipe_jax.config import presets


def get_config():
  return presets.digits('mlp')
