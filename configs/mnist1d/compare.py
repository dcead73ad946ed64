"""Compare (recipe step 4): regularisers for the MNIST-1D CNN, one change at a time, 3 seeds."""
import json

from recipe_jax import defaults


def get_config():
  c = defaults.get_config()
  c.stage = 'compare'
  c.dataset.name = 'mnist1d'
  c.dataset.val_fraction = 0.05
  c.model.name = 'cnn1d'
  c.optimizer.learning_rate = 1e-2
  c.batch_size = 100
  c.num_train_steps = 6000
  c.compare.seeds = 3
  c.compare.variants = json.dumps({
      'shift': {'augment.shift': 5},
      'weight_decay': {'optimizer.name': 'adamw', 'optimizer.weight_decay': 0.01},
      'dropout': {'model.dropout': 0.1},
      'shift+wd': {'augment.shift': 5, 'optimizer.name': 'adamw',
                   'optimizer.weight_decay': 0.01},
  })
  return c
