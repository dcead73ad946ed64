"""LR range test: its rule on noisy curves, reproducibility, and no effect on later training."""
import json
import os

import numpy as np

from conftest import read_summary
from recipe_jax.report import plots
from recipe_jax.stages import lr_find
from recipe_jax.stages import train


def synthetic_curve(lrs, noise_seed):
  """Flat, then a descent centred at lr 1e-3, a minimum near 1e-1, then divergence."""
  x = np.log10(lrs)
  loss = 2.3 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, 20 * (x + 1) ** 2, 0)
  return loss + 0.05 * np.random.default_rng(noise_seed).standard_normal(len(lrs))


def test_suggestion_finds_the_steepest_descent_despite_noise():
  lrs = np.geomspace(1e-6, 10, 300)
  for noise_seed in range(5):
    found = lr_find.suggest(lrs, synthetic_curve(lrs, noise_seed))
    assert 3e-4 < found['suggestion'] < 3e-3, found['suggestion']
    assert 1e-2 < found['min_loss_lr'] < 2e-1
    assert found['diverged_at_lr'] is not None and found['diverged_at_lr'] < 3


def test_range_test_is_reproducible_and_leaves_training_untouched(small_config, tmp_path):
  small_config.lr_find.steps = 60
  small_config.lr_find.seeds = 2
  small_config.lr_find.min_lr = 1e-5
  small_config.lr_find.max_lr = 1.0
  result = lr_find.run(small_config, str(tmp_path / 'a'))
  lr_find.run(small_config, str(tmp_path / 'b'))
  first, again = (json.load(open(tmp_path / d / 'lr_find' / 'curves.json')) for d in 'ab')
  assert result.metrics['suggestion'] == first['suggestion']
  assert result.verdicts[0].check == 'learning_rate'
  assert first['per_seed'][0]['losses'] == again['per_seed'][0]['losses']
  assert first['per_seed'][0]['losses'] != first['per_seed'][1]['losses']  # seeds differ
  assert first['suggestion'] == again['suggestion']
  assert 1e-5 <= first['suggestion'] <= 1.0 and first['spread_factor'] >= 1.0
  assert first['rule'] == lr_find.RULE
  assert os.path.exists(tmp_path / 'a' / 'lr_find' / 'result.json')
  assert os.path.getsize(tmp_path / 'a' / 'lr_find' / 'lr_find.png') > 1000
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints')

  small_config.stage = 'train'
  train.run(small_config, str(tmp_path / 'a'))  # in the workdir lr_find used
  train.run(small_config, str(tmp_path / 'fresh'))
  assert read_summary(tmp_path / 'a')['resumed_from_step'] is None
  assert (read_summary(tmp_path / 'a')['params_sha256'] ==
          read_summary(tmp_path / 'fresh')['params_sha256'])


def test_the_plot_draws_the_rule_it_applies_and_labels_the_lowest_loss(monkeypatch):
  """The dotted line is stop_factor x each seed's running minimum, the cut of `suggest`; a spike
  under it is not marked, one above it is; the lowest loss is a labelled tick."""
  drawn = {}
  monkeypatch.setattr(plots, 'save', lambda fig, path: drawn.update(fig=fig))
  lrs = np.geomspace(1e-5, 1, 200)
  loss = 2.3 - 1.0 / (1 + np.exp(-(np.log10(lrs) + 3) * 3))
  spiked = loss.copy()
  spiked[150:155] += 3.0  # 3.76x its minimum at most: under the 4x rule
  curves = [{**lr_find.suggest(lrs, spiked, 0.9, 4.0), 'seed': 0},
            {**lr_find.suggest(lrs, np.r_[loss[:180], np.geomspace(2, 80, 20)], 0.9, 4.0),
             'seed': 1}]
  assert curves[0]['diverged_at_lr'] is None and curves[1]['diverged_at_lr'] is not None
  plots.lr_range('unused.png', lrs, curves, curves[0]['suggestion'], 4.0)
  ax = drawn['fig'].axes[0]
  rule = [line for line in ax.get_lines() if line.get_linestyle() == ':']
  for line, c in zip(rule, curves):
    np.testing.assert_allclose(line.get_ydata(), 4.0 * np.fmin.accumulate(c['smoothed_loss']))
  assert [line.get_label() for line in ax.get_lines() if line.get_marker() == 'x'] == [
      'seed 1 diverged']
  lowest = min(np.nanmin(c['smoothed_loss']) for c in curves)
  assert f'{lowest:.3g}' in [t.get_text() for t in ax.get_yticklabels()]
  assert '4x its running minimum (above: diverged)' in [t.get_text() for t in
                                                        ax.get_legend().get_texts()]
