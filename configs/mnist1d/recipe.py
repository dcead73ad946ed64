"""The whole recipe on MNIST-1D, from the plain CNN: inspect, sanity, lr_find, overfit, compare,
tune, squeeze (about 2 minutes on a 2-core Intel Xeon, README's quickstart). DIR/report.html is
the one page to read.

Steps go where they change the result: the squeeze stage's members train the full 6000 steps,
while compare's runs train 3000 (its conclusions, the shift's gain beyond noise, are those of
6000) and tune's trials 2000, the median pruner stopping a trial behind the others' median once
3 have finished. Neither stage's runs compile the layer monitor (2.4 s a program on this CPU,
which every new width or variant is), nor do tune's trials write an error analysis: the stages
report neither (the same ensemble accuracy over seeds 0-2: scripts/bench_recipe.py, BUILD.md).
"""
import json

from recipe_jax.config import presets


def get_config():
  c = presets.mnist1d('cnn1d', stage='recipe')
  c.human_baseline = 0.96  # the MNIST-1D paper's
  c.lr_find.seeds = 2
  c.compare.seeds = 2
  c.compare.variants = json.dumps({'shift': {'augment.shift': 5},
                                   'dropout': {'model.dropout': 0.1}})
  c.tune.trials = 8
  c.tune.pruner, c.tune.pruner_startup_trials = 'median', 3
  c.tune.space = json.dumps({
      'optimizer.learning_rate': {'type': 'float', 'low': 1e-3, 'high': 3e-2, 'log': True},
      'augment.shift': {'type': 'int', 'low': 0, 'high': 8},
      'model.width': {'type': 'int', 'low': 16, 'high': 64},
  })
  c.squeeze.members = 'seeds:3'
  c.squeeze.swa_steps = 500
  c.recipe.overrides = json.dumps({
      'overfit': {'num_train_steps': 3000},
      'compare': {'num_train_steps': 3000, 'monitor_layers': False},
      'tune': {'num_train_steps': 2000, 'monitor_layers': False, 'analysis.enabled': False}})
  return c
