"""Learning-rate schedules and optimizers from config."""
import numpy as np
import optax
import pytest

from recipe_jax.config import defaults
from recipe_jax.model import optim


def schedule(name, warmup=0, **changes):
  cfg = defaults.get_config().optimizer
  cfg.learning_rate, cfg.schedule, cfg.warmup_steps = 1.0, name, warmup
  cfg.update(changes)
  lr = optim.learning_rate(cfg, 100)
  return lambda step: float(lr(step)) if callable(lr) else lr


def test_constant_cosine_linear_and_step_decay_have_their_shapes():
  assert [schedule('constant')(s) for s in (0, 99)] == [1.0, 1.0]
  cosine = schedule('cosine')
  assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == 0.0
  linear = schedule('linear')
  assert linear(25) == pytest.approx(0.75) and linear(100) == 0.0
  step = schedule('step', decay_at=(0.5, 0.75), decay_factor=0.1)
  assert [step(s) for s in (0, 49)] == [1.0, 1.0]
  assert step(51) == pytest.approx(0.1) and step(80) == pytest.approx(0.01)


def test_warmup_ramps_from_zero_before_any_schedule():
  for name in ('constant', 'linear', 'warmup_cosine'):
    lr = schedule(name, warmup=10)
    assert lr(0) == 0.0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(1.0)
  assert schedule('linear', warmup=10)(55) == pytest.approx(0.5)  # decays over the other 90


def test_clipping_bounds_the_update():
  cfg = defaults.get_config().optimizer
  cfg.name, cfg.learning_rate, cfg.grad_clip_norm = 'sgd', 1.0, 1.0
  cfg.momentum = 0.0
  tx = optim.create(cfg, 10)
  params = {'w': np.zeros(4, np.float32)}
  updates, _ = tx.update({'w': np.full(4, 100.0, np.float32)}, tx.init(params), params)
  assert np.linalg.norm(updates['w']) == pytest.approx(1.0, rel=1e-5)
  assert isinstance(tx, optax.GradientTransformation)
