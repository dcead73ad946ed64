"""optimizer.accumulate_steps: a batch as micro-batches, one update, the same result."""
import jax
import numpy as np
import pytest

from recipe_jax.engine import experiment
from recipe_jax.errors import UserError
from recipe_jax.engine.mesh import put_replicated
from recipe_jax.engine import batches


def params_after(config, steps=10):
  exp = experiment.build(config)
  order = batches.BatchOrder(config.seed, len(exp.dataset.y_train), config.batch_size)
  step = exp.train_step(order.steps_per_epoch)
  state = put_replicated(exp.mesh, exp.initial_state())
  feed = batches.device_feed(exp.mesh, exp.dataset.x_train, exp.dataset.y_train, order)
  losses = []
  for i in range(steps):
    state, metrics = step(state, *feed(i))
    losses.append(float(metrics['loss']))
  return jax.device_get(state.params), losses


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_micro_batches_give_the_whole_batch_update(small_config, optimizer):
  small_config.optimizer.name = optimizer
  small_config.optimizer.learning_rate = 0.1 if optimizer == 'sgd' else 1e-3
  whole, whole_losses = params_after(small_config)
  small_config.optimizer.accumulate_steps = 4
  micro, micro_losses = params_after(small_config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), whole, micro)
  np.testing.assert_allclose(whole_losses, micro_losses, rtol=1e-5)
  assert whole_losses[-1] < whole_losses[0]  # it trained


def test_accumulate_steps_must_divide_the_batch(small_config):
  small_config.optimizer.accumulate_steps = 3  # batch 100
  with pytest.raises(UserError, match='accumulate_steps=3 must be >= 1 and divide'):
    experiment.build(small_config)


def test_short_runs_of_sanity_lr_find_and_swa_honour_accumulate_steps(small_config, monkeypatch):
  """Every training goes through the one engine, so the short runs (sanity's checks, lr_find's
  seeds alone or side by side, SWA) split their batches as configured too."""
  from recipe_jax.diagnose import weight_averaging
  from recipe_jax.engine import steps
  from recipe_jax.runs import side_by_side
  compiled = []
  real = steps.compile_train_step
  monkeypatch.setattr(steps, 'compile_train_step', lambda settings, *args, **kwargs: (
      compiled.append(settings.accumulate_steps), real(settings, *args, **kwargs))[1])
  small_config.optimizer.accumulate_steps = 4
  exp = experiment.build(small_config)
  x, y = exp.dataset.x_train, exp.dataset.y_train
  exp.run_steps(x, y, 3)  # sanity, lr_find with one seed
  side_by_side.run_steps(exp, x, y, 3, [0, 1])  # lr_find's seeds side by side
  weight_averaging.continue_and_average(exp, exp.initial_state(), steps=2, every=1,
                                        learning_rate=1e-3, ema_decay=0.9)  # SWA
  exp.run_steps(x[:30], y[:30], 2, batch_size=30)  # overfit one batch of 30: 4 does not divide it
  assert compiled == [4, 4, 4, 1]
