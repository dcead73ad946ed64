"""The replicate stage: a planted lucky seed (the best of eight seeds, reported alone) is named
as one; a clean run stays quiet; a rerun that no longer reproduces names what changed; a
perturbation beyond noise names the sensitive key, one that changes nothing does not; runs
that are not finished train runs are refused in one line."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from recipe_jax.config import check as config_check, defaults
from recipe_jax.diagnose import replication
from recipe_jax.errors import UserError
from recipe_jax.report import advice
from recipe_jax.runs import driver
from recipe_jax.stages import replicate


def noisy_npz(path, label_noise=0.4, seed=0):
  """4 classes of Gaussian clouds in 32 dimensions; `label_noise` of the training labels drawn
  at random. A small run's validation accuracy varies from seed to seed by a few points."""
  rng = np.random.default_rng(seed)
  templates = rng.normal(size=(4, 32))

  def split(n, noise):
    y = np.arange(n) % 4
    x = (templates[y] + 1.5 * rng.normal(size=(n, 32))).astype(np.float32)
    return x, np.where(rng.random(n) < noise, rng.integers(0, 4, n), y)
  (x_train, y_train), (x_test, y_test) = split(2000, label_noise), split(500, 0.0)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def short_config(npz):
  """A narrow MLP, 30 steps: the seed moves its validation accuracy (1000 examples)."""
  c = defaults.get_config()
  c.dataset.name = f'npz:{npz}'
  c.dataset.val_fraction = 0.5
  c.model.width, c.optimizer.learning_rate = 2, 0.1
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = 30
  c.monitor_layers, c.analysis.enabled = False, False
  c.replicate.seeds, c.replicate.perturbations = 3, '{}'
  return c


@pytest.fixture(scope='module')
def seeds(tmp_path_factory):
  """Eight seeds of the config trained as train runs: {seed: (run_dir, eval_accuracy)}."""
  base = tmp_path_factory.mktemp('replicate')
  noisy_npz(base / 'noisy.npz')
  config = short_config(base / 'noisy.npz')
  found = {}
  for seed in range(8):
    run_dir = str(base / f'seed_{seed}')
    found[seed] = (run_dir, driver.run_training(config_check.variant(config, {}, seed),
                                               run_dir)['eval_accuracy'])
  return config, found


def replicated(config, run_dir, workdir, **keys):
  stage = config.copy_and_resolve_references()
  stage.stage = 'replicate'
  stage.replicate.run_dir = run_dir
  stage.update_from_flattened_dict({f'replicate.{k}': v for k, v in keys.items()})
  config_check.check_values(stage)
  return {v.check: v for v in replicate.run(stage, str(workdir)).verdicts}


def test_the_best_of_eight_seeds_reported_alone_is_named_a_lucky_seed(seeds, tmp_path):
  config, runs = seeds
  best = max(runs, key=lambda s: runs[s][1])
  found = replicated(config, runs[best][0], tmp_path)
  assert found['reproduced'].status == 'PASS', found['reproduced'].summary
  lucky = found['seed_position']
  assert lucky.status == 'WARN', lucky.summary
  assert f'seed {best} was a lucky seed' in lucky.summary
  others = [json.load(open(tmp_path / 'replicate' / f'seed_{s}' / 'summary.json'))[
      'eval_accuracy'] for s in range(best + 1, best + 4)]
  assert lucky.evidence['mean'] == pytest.approx(np.mean(others))
  assert f'report {np.mean(others):.4f}' in lucky.summary
  assert os.path.exists(tmp_path / 'replicate' / 'spread.png')
  assert '| seeds | 4 |' in open(tmp_path / 'replicate' / 'results.md').read()
  act, why = advice.act_or_ignore('replicate', dataclasses.asdict(lucky))
  assert act and why.startswith(f'report the config as {np.mean(others):.4f} +- ')


def test_a_usual_seed_stays_quiet_and_a_change_that_does_nothing_is_not_sensitive(seeds,
                                                                                  tmp_path):
  config, runs = seeds
  ordered = sorted(runs, key=lambda s: runs[s][1])
  median = ordered[len(ordered) // 2]
  # eval_batch_size changes how validation is batched, not what is learned or measured
  found = replicated(config, runs[median][0], tmp_path, seeds=4,
                     perturbations=json.dumps({'eval_batch_size': ['/2']}))
  assert found['reproduced'].status == 'PASS'
  assert found['seed_position'].status == 'PASS', found['seed_position'].summary
  assert "is one of the config's usual results" in found['seed_position'].summary
  quiet = found['sensitive_eval_batch_size']
  assert quiet.status == 'PASS' and '/2 +0.0000' in quiet.summary, quiet.summary


def test_a_learning_rate_far_off_is_named_the_sensitive_key(seeds, tmp_path):
  config, runs = seeds
  found = replicated(config, runs[0][0], tmp_path, seeds=2,
                     perturbations=json.dumps({'optimizer.learning_rate': ['/100']}))
  v = found['sensitive_optimizer.learning_rate']
  assert v.status == 'WARN', v.summary
  assert 'the result is sensitive to optimizer.learning_rate: /100 -' in v.summary
  assert 'beyond the noise' in v.summary


def test_a_rerun_on_changed_data_names_the_data_as_what_changed(seeds, tmp_path):
  config, runs = seeds
  copy = str(tmp_path / 'run')
  shutil.copytree(runs[0][0], copy)
  npz = config.dataset.name[len('npz:'):]
  moved = str(tmp_path / 'noisy.npz')
  shutil.copy(npz, moved)
  saved = json.load(open(os.path.join(copy, 'config.json')))
  saved['dataset']['name'] = f'npz:{moved}'
  json.dump(saved, open(os.path.join(copy, 'config.json'), 'w'))
  noisy_npz(moved, label_noise=0.1, seed=1)  # the file the run names now holds other data
  found = replicated(config, copy, tmp_path / 'w')
  v = found['reproduced']
  assert v.status == 'WARN', v.summary
  assert f'the data: npz:{moved} is not the file the run trained on' in v.summary
  assert 'start from what changed (the data' in advice.act_or_ignore(
      'replicate', dataclasses.asdict(v))[1]


def test_a_rerun_that_differs_with_nothing_changed_says_the_training_is_not_deterministic():
  v = replication.reproduction(0.61, 0.6, 'eval_accuracy', 3, [])
  assert v.status == 'WARN' and 'seed 3 trained again gives validation accuracy 0.6000' in v.summary
  assert 'not deterministic here' in v.summary
  code = replication.reproduction(0.61, 0.6, 'eval_accuracy', 3, ['recipe_jax: commit a -> b'])
  assert 'recipe_jax: commit a -> b' in code.summary


def test_the_seed_position_on_both_sides_of_the_interval():
  from scipy import stats
  others = [0.59, 0.60, 0.61, 0.60]  # one more seed: 0.60 +- t(3) * std * sqrt(1 + 1/4)
  half = stats.t.ppf(0.975, 3) * np.std(others, ddof=1) * np.sqrt(1.25)
  for value, expected in ((0.60 + half - 1e-4, 'PASS'), (0.60 + half + 1e-4, 'WARN'),
                          (0.60 - half + 1e-4, 'PASS'), (0.60 - half - 1e-4, 'WARN')):
    v = replication.seed_position(value, others, 'eval_accuracy', 0.95, 1000)
    assert v.status == expected, (value, v.summary)
  low = replication.seed_position(0.50, others, 'eval_accuracy', 0.95, 1000)
  assert 'unlucky seed' in low.summary and 'better than that run says' in low.summary
  changed = replication.seed_position(0.70, others, 'eval_accuracy', 0.95, 1000,
                                      reproduced=False)
  assert 'lucky seed' in changed.summary and 'what changed since, not the seed' in changed.summary


def test_the_advice_for_a_seed_that_gave_no_number_is_not_an_unlucky_seed():
  """A NaN metric was advised 'ignore: an unlucky seed, nan +- nan'."""
  v = replication.seed_position(float('nan'), [0.6, 0.61], 'eval_accuracy', 0.95, 1000)
  assert v.status == 'WARN' and v.cause == 'metric_not_finite'
  act, why = advice.act_or_ignore('replicate', dataclasses.asdict(v))
  assert act and 'unlucky' not in why and 'nan' not in why, why
  low = replication.seed_position(0.50, [0.59, 0.60, 0.61], 'eval_accuracy', 0.95, 1000)
  act, why = advice.act_or_ignore('replicate', dataclasses.asdict(low))
  assert not act and why.startswith('an unlucky seed')


def test_seeds_that_agree_exactly_do_not_make_one_example_significant():
  v = replication.seed_position(0.601, [0.6, 0.6, 0.6], 'eval_accuracy', 0.95, 1000)
  assert v.status == 'PASS', v.summary
  lower_is_better = replication.seed_position(0.2, [0.5, 0.51, 0.49], 'eval_loss', 0.95)
  assert 'lucky seed' in lower_is_better.summary


def test_an_unfinished_run_or_another_stage_is_refused_in_one_line(seeds, tmp_path):
  config, runs = seeds
  copy = str(tmp_path / 'run')
  shutil.copytree(runs[1][0], copy)
  summary = json.load(open(os.path.join(copy, 'summary.json')))
  json.dump(dict(summary, finished=False), open(os.path.join(copy, 'summary.json'), 'w'))
  with pytest.raises(UserError, match='has not finished'):
    replicated(config, copy, tmp_path / 'a')
  stage_dir = tmp_path / 'compare_workdir' / 'compare'
  os.makedirs(stage_dir)
  saved = json.load(open(os.path.join(copy, 'config.json')))
  json.dump(dict(saved, stage='compare'), open(stage_dir / 'config.json', 'w'))
  with pytest.raises(UserError, match='holds a compare stage, not a train run'):
    replicated(config, str(stage_dir), tmp_path / 'b')
  with pytest.raises(UserError, match='not a run directory'):
    replicated(config, str(tmp_path / 'compare_workdir'), tmp_path / 'c')


def test_a_perturbation_that_diverges_names_the_key_sensitive_and_the_rest_still_reports(
    seeds, tmp_path):
  config, runs = seeds
  found = replicated(config, runs[2][0], tmp_path, seeds=2,
                     perturbations=json.dumps({'optimizer.learning_rate': ['x100000']}))
  v = found['sensitive_optimizer.learning_rate']
  assert v.status == 'WARN' and 'x100000 diverged (' in v.summary, v.summary
  assert found['reproduced'].status == 'PASS'
  with pytest.raises(UserError, match='leaves model.dropout at 0.0 in this run'):
    replicated(config, runs[2][0], tmp_path / 'b', perturbations=json.dumps(
        {'model.dropout': ['x2']}))
  assert not os.path.exists(tmp_path / 'b' / 'replicate' / 'seed_2')  # refused before training
