"""Tune (recipe step 5): quasi-random search around the regularised MNIST-1D CNN, 40 trials.

Start the same command on more machines (with --config.tune.storage=postgresql+psycopg://...
and a shared --workdir) to spread the trials over them."""
import json

from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='tune')
  c.augment.shift = 5
  c.optimizer.name = 'adamw'
  c.tune.trials = 40
  c.tune.space = json.dumps({
      'optimizer.learning_rate': {'type': 'float', 'low': 1e-3, 'high': 3e-2, 'log': True},
      'optimizer.weight_decay': {'type': 'float', 'low': 1e-5, 'high': 1e-1, 'log': True},
      'augment.shift': {'type': 'int', 'low': 0, 'high': 10},
      'model.dropout': {'type': 'categorical', 'choices': [0.0, 0.1, 0.2]},
      'model.width': {'type': 'int', 'low': 16, 'high': 64},
  })
  return c
