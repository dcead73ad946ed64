"""The whole recipe on scikit-learn's digits with the small CNN, sized for a few minutes on
2 cores: every stage, data_scaling included."""
import json

from recipe_jax.config import presets


def get_config():
  c = presets.digits('cnn2d', stage='recipe')
  c.num_train_steps = 600
  c.eval_every_steps = c.checkpoint_every_steps = 200
  c.inspect.cv_steps = 100
  c.sanity.steps = 200
  c.lr_find.seeds = 2
  c.lr_find.steps = 150
  c.compare.seeds = 2
  c.compare.variants = json.dumps({'dropout': {'model.dropout': 0.2}})
  c.data_scaling.seeds = 1
  c.tune.trials = 4
  c.tune.space = json.dumps({
      'optimizer.learning_rate': {'type': 'float', 'low': 3e-4, 'high': 1e-2, 'log': True},
      'model.width': {'type': 'int', 'low': 16, 'high': 64},
  })
  c.squeeze.members = 'seeds:3'
  c.squeeze.swa_steps = 200
  c.squeeze.student = json.dumps({'model.width': 8})
  c.recipe.stages = 'inspect,sanity,lr_find,overfit,compare,data_scaling,tune,squeeze'
  return c
