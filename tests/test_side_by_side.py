"""Seeds trained side by side (one vmapped program) compute what each seed computes alone."""
import os

import jax
import numpy as np
import pytest

from recipe_jax.engine import experiment
from recipe_jax.runs import side_by_side
from recipe_jax.runs import finished as runs
from recipe_jax.runs import driver

SEEDS = (0, 1, 2)


@pytest.fixture
def config(small_config):
  c = small_config.copy_and_resolve_references()
  c.model.dropout = 0.2  # the dropout and augmentation keys come from each seed
  c.augment.shift = 3
  c.seeds_side_by_side = 'on'
  c.analysis.enabled = False
  c.num_train_steps = 40
  c.eval_every_steps = c.checkpoint_every_steps = 20
  return c


def seed_configs(config, num_train_steps=None):
  configs = []
  for seed in SEEDS:
    c = config.copy_and_resolve_references()
    c.seed = seed
    c.num_train_steps = num_train_steps or c.num_train_steps
    configs.append(c)
  return configs


def test_each_seed_side_by_side_follows_the_seed_trained_alone(config):
  """Same init, batch order, dropout and augmentation per seed: the losses of 30 steps agree
  to float rounding (vmapped kernels sum in another order), and differ between seeds."""
  exp = experiment.build(config)
  x, y = exp.dataset.x_train, exp.dataset.y_train
  together = side_by_side.run_steps(exp, x, y, 30, SEEDS)['loss']
  for i, seed in enumerate(SEEDS):
    alone = exp.run_steps(x, y, 30, seed=seed)[1]['loss']
    np.testing.assert_allclose(together[i], alone, rtol=1e-4, atol=1e-5)
  assert not np.allclose(together[0], together[1])


def test_side_by_side_runs_end_as_ordinary_runs_close_to_the_runs_alone(config, tmp_path):
  configs = seed_configs(config)
  dirs = [str(tmp_path / 'together' / f'seed_{s}') for s in SEEDS]
  assert side_by_side.train(configs, dirs) == side_by_side.FINISHED
  for c, d in zip(configs, dirs):
    summary = driver.run_training(c, d)  # finds the run at its last step: final evaluation only
    alone = driver.run_training(c, str(tmp_path / 'alone' / f'seed_{c.seed}'))
    assert summary['finished'] and summary['step'] == 40 and summary['resumed_from_step'] == 40
    assert [h['step'] for h in summary['history']] == [20, 40]
    assert summary['history'][0].keys() == alone['history'][0].keys()
    assert abs(summary['test_accuracy'] - alone['test_accuracy']) < 0.02
    exp = experiment.build(c)
    together_params = runs.restore_final_state(exp, d).params
    alone_params = runs.restore_final_state(exp, str(tmp_path / 'alone' / f'seed_{c.seed}')).params
    # Adam turns a near-zero gradient's rounding into an lr-sized step of either sign, so a few
    # parameters may move apart; the rest follow the run alone closely.
    differences = np.concatenate([np.abs(a - b).ravel() for a, b in zip(
        jax.tree.leaves(together_params), jax.tree.leaves(alone_params))])
    assert np.mean(differences <= 1e-3) >= 0.99 and np.median(differences) < 1e-5, (
        np.sort(differences)[-10:])


def test_side_by_side_is_bit_reproducible_and_resumes_exactly(config, tmp_path):
  """Twice the same: the same bits. Stopped at step 20 and continued to 40: the same bits as a
  straight run (constant learning rate)."""
  straight = [str(tmp_path / 'a' / str(s)) for s in SEEDS]
  again = [str(tmp_path / 'b' / str(s)) for s in SEEDS]
  resumed = [str(tmp_path / 'c' / str(s)) for s in SEEDS]
  side_by_side.train(seed_configs(config), straight)
  side_by_side.train(seed_configs(config), again)
  side_by_side.train(seed_configs(config, num_train_steps=20), resumed)
  assert side_by_side.train(seed_configs(config), resumed) == side_by_side.FINISHED
  shas = {name: [driver.run_training(c, d)['params_sha256']
                 for c, d in zip(seed_configs(config), dirs)]
          for name, dirs in (('straight', straight), ('again', again), ('resumed', resumed))}
  assert shas['straight'] == shas['again'] == shas['resumed']
  assert len(set(shas['straight'])) == len(SEEDS)


def test_seeds_at_different_steps_or_a_diverging_seed_go_one_at_a_time(config, tmp_path):
  dirs = [str(tmp_path / str(s)) for s in SEEDS]
  side_by_side.train(seed_configs(config, num_train_steps=20)[:1], dirs[:1])  # seed 0 at 20
  assert side_by_side.train(seed_configs(config), dirs) == side_by_side.ONE_AT_A_TIME
  config.optimizer.learning_rate = 1e4  # diverges within the first window
  config.optimizer.name = 'sgd'
  assert (side_by_side.train(seed_configs(config), [str(tmp_path / 'd' / str(s)) for s in SEEDS])
          == side_by_side.ONE_AT_A_TIME)


def test_side_by_side_applies_only_where_it_is_on_and_possible(config):
  assert side_by_side.why_not(seed_configs(config)) is None
  config.seeds_side_by_side = 'auto'  # off on CPU: batched convolutions were slower there
  assert 'auto on cpu' in side_by_side.why_not(seed_configs(config))
  config.seeds_side_by_side = 'on'
  config.early_stopping.patience = 2
  assert 'early stopping' in side_by_side.why_not(seed_configs(config))
  config.early_stopping.patience = 0
  different = seed_configs(config)
  different[1].model.width = 8
  assert 'more than the seed' in side_by_side.why_not(different)


def test_compare_with_seeds_side_by_side_gives_every_run_its_summary(config, tmp_path):
  from recipe_jax.stages import compare
  config.stage = 'compare'
  config.compare.seeds = 2
  config.compare.variants = '{"wider": {"model.width": 64}}'
  result = compare.run(config, str(tmp_path))
  assert result.finished
  for name in ('baseline', 'wider'):
    for seed in (0, 1):
      summary = runs.finished_summary(str(tmp_path / 'compare' / name / f'seed_{seed}'))
      assert summary and summary['resumed_from_step'] == 40  # trained side by side
  assert os.path.isfile(tmp_path / 'compare' / 'results.md')
