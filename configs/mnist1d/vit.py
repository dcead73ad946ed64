"""MNIST-1D ViT: the 40 positions cut into 10 patches of 4, 4 pre-LN blocks of width 64.

Adam at 1e-3 with a warmup: the MNIST-1D setup's 1e-2 constant rate is too high for attention.
"""
from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('vit')
  c.model.width, c.model.depth, c.model.heads, c.model.patch_size = 64, 4, 4, 4
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule, c.optimizer.warmup_steps = 'warmup_cosine', 300
  return c
