"""Optax optimizer and learning-rate schedule from `config.optimizer`."""
import optax

from recipe_jax.errors import UserError

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'linear', 'step')


def learning_rate(cfg, num_train_steps: int):
  """The schedule after `warmup_steps` of linear warmup from 0 (any schedule may warm up;
  warmup_cosine is cosine that requires it)."""
  if cfg.schedule not in SCHEDULES:
    raise UserError(f"unknown optimizer.schedule '{cfg.schedule}'; use one of "
                    f"{', '.join(SCHEDULES)}")
  if cfg.schedule == 'warmup_cosine' and cfg.warmup_steps < 1:
    raise UserError('optimizer.schedule=warmup_cosine needs optimizer.warmup_steps >= 1')
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(num_train_steps - warmup, 1)
  if cfg.schedule == 'constant':
    decay = optax.constant_schedule(lr)
  elif cfg.schedule in ('cosine', 'warmup_cosine'):
    decay = optax.cosine_decay_schedule(lr, decay_steps)
  elif cfg.schedule == 'linear':
    decay = optax.linear_schedule(lr, 0.0, decay_steps)
  else:  # step: multiply by decay_factor at each fraction of the run in decay_at
    boundaries = {int(fraction * decay_steps): cfg.decay_factor for fraction in cfg.decay_at}
    decay = optax.piecewise_constant_schedule(lr, boundaries)
  if not warmup:
    return lr if cfg.schedule == 'constant' else decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def create(cfg, num_train_steps: int, schedule=None) -> optax.GradientTransformation:
  """`schedule` replaces the configured learning rate (the LR range test sweeps it)."""
  lr = learning_rate(cfg, num_train_steps) if schedule is None else schedule
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
