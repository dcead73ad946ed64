"""scikit-learn digits (8x8) ViT: 16 patches of 2x2, 4 pre-LN blocks of width 64."""
from recipe_jax.config import presets


def get_config():
  c = presets.digits('vit')
  c.model.width, c.model.depth, c.model.heads, c.model.patch_size = 64, 4, 4, 2
  c.optimizer.schedule, c.optimizer.warmup_steps = 'warmup_cosine', 200
  return c
