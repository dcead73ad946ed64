"""Optax optimizer and learning-rate schedule from `config.optimizer` (checked by
`config_check`: names, ranges and the combinations that make sense)."""
import functools
import types

import optax


def learning_rate(cfg, num_train_steps: int):
  """The schedule after `warmup_steps` of linear warmup from 0 (any schedule may warm up;
  warmup_cosine is cosine that requires it)."""
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
  """`schedule` replaces the configured learning rate (the LR range test sweeps it).

  The same settings give the same optimizer object, so runs of one process that differ only
  in what the step does not see (a constant rate's run length, the seed) share one compiled
  train step (`steps.compile_train_step` is cached on it) instead of tracing it anew."""
  if schedule is not None:
    return _create(cfg, num_train_steps, schedule)
  settings = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                          for k, v in cfg.items()))
  sized = cfg.schedule != 'constant' or cfg.warmup_steps
  return _create_once(settings, num_train_steps if sized else 0)


@functools.lru_cache(maxsize=32)
def _create_once(settings: tuple, num_train_steps: int) -> optax.GradientTransformation:
  return _create(types.SimpleNamespace(**dict(settings)), num_train_steps, None)


def _create(cfg, num_train_steps: int, schedule) -> optax.GradientTransformation:
  lr = learning_rate(cfg, num_train_steps) if schedule is None else schedule
  if cfg.name == 'adam':  # the config check refused a weight_decay it would ignore
    opt = optax.adam(lr)
  elif cfg.name == 'adamw':
    opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
  else:  # sgd
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                      optax.sgd(lr, momentum=cfg.momentum or None))
  if cfg.grad_clip_norm is not None:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
