"""Creative augmentation (recipe step 4): mixup and cutmix against, and on top of, the circular
shift of configs/mnist1d/cnn_regularized.py (the baseline here), 3 seeds."""
import json

from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='compare')
  c.augment.shift = 5
  c.compare.seeds = 3
  c.compare.variants = json.dumps({
      'mixup_instead': {'augment.shift': 0, 'augment.mixup': 0.2},
      'cutmix_instead': {'augment.shift': 0, 'augment.cutmix': 1.0},
      'shift+mixup': {'augment.mixup': 0.2},
      'shift+cutmix': {'augment.cutmix': 1.0},
  })
  return c
