"""stage='compare': one change at a time, over seeds, resumable."""
import csv
import json
import re
import os

import pytest

from recipe_jax.config import check as config_check, defaults, selection
from recipe_jax.diagnose import noise
from recipe_jax.errors import UserError
from recipe_jax.stages import compare
from recipe_jax.runs import driver


@pytest.fixture
def compare_config(small_config):
  small_config.stage = 'compare'
  small_config.num_train_steps = 40
  small_config.eval_every_steps = 20
  small_config.checkpoint_every_steps = 20
  small_config.compare.seeds = 2
  small_config.compare.variants = json.dumps({'narrow': {'model.width': 8},
                                              'smooth': {'label_smoothing': 0.1}})
  return small_config


def test_compare_tabulates_variants_and_does_not_redo_finished_runs(compare_config, tmp_path,
                                                                    monkeypatch):
  result = compare.run(compare_config, str(tmp_path))
  assert [v.check for v in result.verdicts] == ['variant_narrow', 'variant_smooth']
  rows = [{'variant': 'baseline', 'mean': result.metrics['baseline_eval_accuracy']},
          *[{'variant': v.check[len('variant_'):], **v.evidence} for v in result.verdicts]]
  assert all(r['seeds'] == 2 for r in rows[1:])
  narrow = json.load(open(tmp_path / 'compare/narrow/seed_1/config.json'))
  assert narrow['model']['width'] == 8 and narrow['seed'] == 1
  with open(tmp_path / 'compare' / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['variant'] for r in table] == ['baseline', 'narrow', 'smooth']
  assert all(r['noise'] in ('inside noise', 'beyond noise') for r in table[1:])
  markdown = (tmp_path / 'compare' / 'results.md').read_text()
  assert '| narrow |' in markdown and 'curves.png' in markdown
  assert os.path.getsize(tmp_path / 'compare' / 'curves.png') > 1000

  trained = []
  real_run = driver.run_training
  monkeypatch.setattr(driver, 'run_training', lambda c, d: trained.append(d) or real_run(c, d))
  os.remove(tmp_path / 'compare/smooth/seed_0/summary.json')  # as if it had been killed
  again = compare.run(compare_config, str(tmp_path))
  again = [{'mean': again.metrics['baseline_eval_accuracy']},
           *[v.evidence for v in again.verdicts]]
  assert trained == [str(tmp_path / 'compare/smooth/seed_0')]
  assert [r['mean'] for r in again] == pytest.approx([r['mean'] for r in rows])


def test_bad_variants_are_refused_before_training(compare_config, tmp_path):
  compare_config.compare.variants = '{"x": {"model.no_such_key": 1}}'
  with pytest.raises(UserError, match='no_such_key'):
    compare.run(compare_config, str(tmp_path))
  compare_config.compare.variants = '{"x": '
  with pytest.raises(UserError, match='not valid JSON'):
    compare.run(compare_config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'compare' / 'baseline')


def test_the_noise_flag_compares_the_delta_with_twice_its_standard_error():
  def runs(*accuracies):
    return [{'eval_accuracy': a, 'train_accuracy': 1.0, 'test_accuracy': a} for a in accuracies]
  summaries = {'baseline': runs(0.90, 0.91, 0.92), 'better': runs(0.95, 0.96, 0.97),
               'same': runs(0.905, 0.915, 0.925)}
  rows = {r['variant']: r for r in noise.group_rows(summaries, {k: {} for k in summaries},
                                                 'eval_accuracy')}
  assert rows['better']['noise'] == 'beyond noise'
  assert rows['better']['delta'] == pytest.approx(0.05)
  assert rows['same']['noise'] == 'inside noise'
  assert rows['baseline']['train_val_gap'] == pytest.approx(0.09)


def test_seeds_that_agree_exactly_do_not_make_every_difference_significant():
  """Two seeds with identical accuracies gave +- 0.0000, and a one-example difference on 200
  validation examples was called beyond the noise."""
  def runs(accuracy):
    return [{'eval_accuracy': accuracy, 'train_accuracy': 1.0, 'test_accuracy': accuracy,
             'val_examples': 200}] * 2
  summaries = {'baseline': runs(0.900), 'one_more': runs(0.905), 'much_better': runs(0.99)}
  rows = {r['variant']: r for r in noise.group_rows(summaries, {k: {} for k in summaries},
                                                 'eval_accuracy')}
  assert rows['one_more']['noise'] == 'inside noise'  # binomial error of 200 examples: ~0.03
  assert rows['much_better']['noise'] == 'beyond noise'


def test_two_workers_split_one_comparison_through_a_study(compare_config, tmp_path):
  from conftest import as_flags, start_main
  compare_config.compare.variants = json.dumps({'narrow': {'model.width': 8}})
  compare_config.compare.storage = f'sqlite:///{tmp_path / "compare.db"}'
  flags = ['--config=configs/mnist1d/mlp.py', *as_flags(compare_config)]
  workers = [start_main(tmp_path, *flags) for _ in range(2)]
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  trained = [line for out in outputs for line in out.splitlines() if 'compare: training' in line]
  assert len(trained) == 4  # each of the 4 runs trained once, by one worker or the other
  assert all(any('compare: training' in line for line in out.splitlines()) for out in outputs)
  # One line per run when it ends, no step lines (12 a run before).
  lines = [line for out in outputs for line in out.splitlines()]
  assert not [line for line in lines if re.search(r'step \d+/\d+ \(', line)]
  ended = [line for line in lines if re.search(r'run (baseline|narrow)/seed_\d: validation', line)]
  assert len(ended) >= 4, '\n'.join(lines[-40:])
  with open(tmp_path / 'compare' / 'results.csv') as f:
    assert [r['variant'] for r in csv.DictReader(f)] == ['baseline', 'narrow']


def test_a_killed_workers_run_is_retried_from_its_checkpoint(compare_config, tmp_path):
  import signal
  from conftest import (as_flags, read_summary, run_main, start_main, wait_for_checkpoint,
                        wait_until_a_trial_is_stale)
  compare_config.compare.variants = json.dumps({'narrow': {'model.width': 8}})
  compare_config.compare.seeds = 1
  compare_config.compare.storage = f'sqlite:///{tmp_path / "compare.db"}'
  compare_config.compare.heartbeat_s = 1
  compare_config.num_train_steps, compare_config.checkpoint_every_steps = 3000, 100
  compare_config.eval_every_steps = 1000
  flags = ['--config=configs/mnist1d/mlp.py', *as_flags(compare_config)]
  worker = start_main(tmp_path, *flags)
  wait_for_checkpoint(worker, tmp_path / 'compare' / 'baseline' / 'seed_0' / 'checkpoints')
  worker.send_signal(signal.SIGKILL)
  worker.communicate(timeout=60)
  wait_until_a_trial_is_stale(compare_config.compare.storage, 1)
  again = run_main(tmp_path, *flags, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert read_summary(tmp_path / 'compare' / 'baseline' / 'seed_0')['resumed_from_step'] > 0
  with open(tmp_path / 'compare' / 'results.csv') as f:
    assert [r['variant'] for r in csv.DictReader(f)] == ['baseline', 'narrow']


def test_stage_progress_counts_runs_and_gives_an_eta_from_trained_runs_only(caplog):
  from recipe_jax import console
  progress = console.StageProgress('compare', 4)
  with caplog.at_level('INFO'):
    progress.done(1, trained_now=False)  # reused from an earlier start: no rate yet
    progress.done(2)
  first, second = [r.getMessage() for r in caplog.records]
  assert first == 'compare: 1/4 runs, ETA ?'
  assert second.startswith('compare: 2/4 runs, ETA ') and '?' not in second


def test_a_loss_metric_picks_the_lowest_and_calls_a_lower_loss_better():
  summaries = {name: [{'eval_loss': loss + noise, 'eval_accuracy': 0.5, 'train_accuracy': 0.6,
                       'test_accuracy': 0.5, 'history': []} for noise in (0.0, 0.001, 0.002)]
               for name, loss in (('baseline', 0.5), ('better', 0.3), ('worse', 0.7))}
  rows = noise.group_rows(summaries, {n: {} for n in summaries}, 'eval_loss')
  verdicts = {v.check: v.status for v in compare.verdicts(rows, 'eval_loss')}
  assert verdicts == {'variant_better': 'PASS', 'variant_worse': 'WARN'}
  assert selection.best(rows, 'eval_loss', lambda r: r['mean'])['variant'] == 'better'


def test_a_test_metric_never_selects():
  c = defaults.get_config()
  c.compare.metric = 'test_accuracy'
  with pytest.raises(UserError, match="compare.metric='test_accuracy': use a validation metric"):
    config_check.check_values(c)
