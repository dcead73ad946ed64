"""Compare (recipe step 4): regularisers for the MNIST-1D CNN, one change at a time, 3 seeds."""
import json

from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='compare')
  c.compare.seeds = 3
  c.compare.variants = json.dumps({
      'shift': {'augment.shift': 5},
      'weight_decay': {'optimizer.name': 'adamw', 'optimizer.weight_decay': 0.01},
      'dropout': {'model.dropout': 0.1},
      'shift+wd': {'augment.shift': 5, 'optimizer.name': 'adamw',
                   'optimizer.weight_decay': 0.01},
  })
  return c
