"""Checks a resolved config before anything heavy runs; each problem is one UserError line."""
from recipe_jax import console, data, losses, models, optim
from recipe_jax.errors import UserError

STAGES = ('train', 'inspect', 'sanity', 'lr_find', 'overfit', 'compare', 'tune',
          'evaluate', 'squeeze', 'data_scaling', 'recipe')


def check(config) -> None:
  if config.stage not in STAGES:
    raise UserError(f"unknown stage '{config.stage}'; use one of {', '.join(STAGES)}")
  check_dataset_name(config.dataset.name)
  models.check_name(config.model.name)
  losses.create(config.loss)
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise UserError(f"unknown optimizer.name '{config.optimizer.name}'; use one of "
                    f"{', '.join(optim.OPTIMIZERS)}")
  if config.optimizer.schedule not in optim.SCHEDULES:
    raise UserError(f"unknown optimizer.schedule '{config.optimizer.schedule}'; use one of "
                    f"{', '.join(optim.SCHEDULES)}")
  for key in ('batch_size', 'eval_batch_size', 'num_train_steps', 'log_every_steps',
              'eval_every_steps', 'checkpoint_every_steps', 'max_to_keep'):
    if config[key] < 1:
      raise UserError(f'{key}={config[key]} must be a positive integer')
  if not 0.0 <= config.dataset.val_fraction < 1.0:
    raise UserError(f'dataset.val_fraction={config.dataset.val_fraction} must be in [0, 1)')
  if not config.optimizer.learning_rate > 0:
    raise UserError(f'optimizer.learning_rate={config.optimizer.learning_rate} must be > 0')
  if not config.divergence_factor > 1:
    raise UserError(f'divergence_factor={config.divergence_factor} must be > 1')


def check_dataset_name(name: str) -> None:
  if name in data.EMBEDDED or name.startswith(data.NPZ_PREFIX):
    return
  console.import_tensorflow_quietly()
  import tensorflow_datasets as tfds
  try:
    tfds.builder_cls(name.split(':')[0].split('/')[0])
  except Exception:  # TFDS raises DatasetNotFoundError with a long multi-line text
    raise UserError(f"unknown dataset '{name}'; use one of {', '.join(data.EMBEDDED)}, "
                    "'npz:PATH' (arrays x_train, y_train, x_test, y_test) or a TFDS name "
                    "such as mnist, fashion_mnist, cifar10") from None
