"""Optax optimizer and learning-rate schedule from `config.optimizer`."""
import optax

from recipe_jax.errors import UserError

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')


def learning_rate(cfg, num_train_steps: int):
  if cfg.schedule == 'constant':
    return cfg.learning_rate
  if cfg.schedule == 'cosine':
    return optax.cosine_decay_schedule(cfg.learning_rate, num_train_steps)
  if cfg.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                              num_train_steps)
  raise UserError(f"unknown optimizer.schedule '{cfg.schedule}'; use one of {', '.join(SCHEDULES)}")


def create(cfg, num_train_steps: int) -> optax.GradientTransformation:
  lr = learning_rate(cfg, num_train_steps)
  if cfg.name == 'adam':
    if cfg.weight_decay:
      raise UserError('optimizer.weight_decay needs optimizer.name=adamw (decoupled) or sgd; '
                      'adam would silently ignore it')
    opt = optax.adam(lr)
  elif cfg.name == 'adamw':
    opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
  elif cfg.name == 'sgd':
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                      optax.sgd(lr, momentum=cfg.momentum or None))
  else:
    raise UserError(f"unknown optimizer.name '{cfg.name}'; use one of {', '.join(OPTIMIZERS)}")
  if cfg.grad_clip_norm is not None:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
