"""The scale_up stage on a planted flip: on labels 40% noisy, a wide MLP wins after 10 steps
(it learns faster) and loses after 400 (it memorises the noise), while a narrow one cannot
memorise. The verdict names the flipped conclusions; a change that alters nothing stays quiet;
a folder without a finished compare or tune stage is refused in one line."""
import dataclasses
import json
import os

import pytest

from recipe_jax.config import check as config_check
from recipe_jax.diagnose import noise, trends
from recipe_jax.errors import UserError
from recipe_jax.model import models
from recipe_jax.report import advice
from recipe_jax.stages import compare, scale_up
from recipe_jax.verdicts import read_result
from test_replicate import noisy_npz, short_config


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
  """A finished compare of widths 256 (baseline), 8 and 4 at 10 steps, two seeds each."""
  base = tmp_path_factory.mktemp('scale_up')
  noisy_npz(base / 'noisy.npz')
  config = short_config(base / 'noisy.npz')
  config.model.width, config.optimizer.learning_rate = 256, 1e-2
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 10
  config.log_every_steps = 10
  config.stage, config.compare.seeds = 'compare', 2
  config.compare.variants = json.dumps({'narrow': {'model.width': 8},
                                        'narrow4': {'model.width': 4}})
  workdir = str(base / 'compare_workdir')
  from recipe_jax.runs import store
  store.claim(os.path.join(workdir, 'compare'), config, 'compare')
  compare.run(config, workdir)
  return config, workdir


def scaled_up(config, from_dir, workdir, changes):
  stage = config.copy_and_resolve_references()
  stage.stage = 'scale_up'
  stage.scale_up.from_dir = from_dir
  stage.scale_up.changes = json.dumps(changes)
  config_check.check_values(stage)
  return scale_up.run(stage, str(workdir))


def test_a_planted_flip_at_the_larger_scale_is_named(compared, tmp_path):
  config, workdir = compared
  result = scaled_up(config, workdir, tmp_path, {'num_train_steps': 'x40'})
  v = result.verdicts[0]
  assert v.check == 'trends_hold' and v.status == 'WARN', v.summary
  assert '2 of 3 conclusions flip at the larger scale (num_train_steps x40)' in v.summary
  assert 'Spearman -1.00 over 3 groups' in v.summary
  assert 'small: baseline > narrow > narrow4; larger: narrow4 > narrow > baseline' in v.summary
  assert 'baseline beat narrow4 by' in v.summary and 'it loses by' in v.summary
  assert result.metrics['best_at_larger_scale'] == 'narrow4'
  act, why = advice.act_or_ignore('scale_up', dataclasses.asdict(v))
  assert act and 'decide at the scale you will train at' in why
  summary = json.load(open(tmp_path / 'scale_up' / 'narrow4' / 'seed_1' / 'summary.json'))
  assert summary['step'] == 400
  assert os.path.exists(tmp_path / 'scale_up' / 'trends.png')
  assert '- flips: narrow4 - baseline' in open(tmp_path / 'scale_up' / 'results.md').read()


def test_a_change_that_alters_no_run_keeps_every_conclusion(compared, tmp_path):
  config, workdir = compared
  result = scaled_up(config, workdir, tmp_path, {'eval_batch_size': '/2'})
  v = result.verdicts[0]
  assert v.status == 'PASS', v.summary
  assert '3 of 3 conclusions hold; Spearman +1.00' in v.summary


def test_the_rank_correlation_threshold_on_both_sides():
  groups, small = ['a', 'b', 'c', 'd'], [0.9, 0.8, 0.7, 0.6]
  large = [0.9, 0.7, 0.8, 0.6]  # one swap: rho = 0.8
  assert trends.rank_correlation(small, large) == pytest.approx(0.8)
  assert trends.verdict(groups, small, large, [], 'eval_accuracy', 'x10', 0.79).status == 'PASS'
  low = trends.verdict(groups, small, large, [], 'eval_accuracy', 'x10', 0.81)
  assert low.status == 'WARN' and 'the ranking does not hold' in low.summary
  two = trends.verdict(['a', 'b'], [0.9, 0.8], [0.8, 0.9], [], 'eval_accuracy', 'x10', 0.5)
  assert two.status == 'WARN' and two.summary.startswith('nothing to check'), two.summary
  nan = trends.verdict(groups, small, [0.9, float('nan'), 0.8, 0.6], [], 'eval_accuracy', 'x10',
                       0.5)
  assert nan.status == 'WARN' and 'nothing to check' in nan.summary


def test_conclusions_that_all_fade_at_scale_warn_and_one_that_holds_beside_a_fade_passes():
  """'the small-scale trends hold' was PASSed when every conclusion faded and none held."""
  runs = lambda *values: [{'eval_accuracy': v, 'val_examples': 10 ** 6} for v in values]
  small = {'a': runs(0.80, 0.81), 'b': runs(0.90, 0.91)}
  large = {'a': runs(0.85, 0.90), 'b': runs(0.86, 0.91)}
  found = trends.conclusions(small, large, lambda x, y: noise.difference(x, y,
                                                                          'eval_accuracy'))
  assert [c['fate'] for c in found] == ['fades']
  v = trends.verdict(['a', 'b'], [0.805, 0.905], [0.875, 0.885], found, 'eval_accuracy',
                     'x10', 0.5)
  assert v.status == 'WARN' and v.cause == 'trends_all_faded', v.summary
  assert v.summary.startswith('none of the 1 small-scale conclusions holds at the larger scale')
  assert 'trends hold' not in v.summary
  act, why = advice.act_or_ignore('scale_up', dataclasses.asdict(v))
  assert 'inside the noise at the larger scale' in why and 'is not the order' not in why
  held = dict(found[0], fate=trends.HOLDS)
  v = trends.verdict(['a', 'b', 'c'], [0.805, 0.905, 0.5], [0.875, 0.885, 0.5],
                     [found[0], held], 'eval_accuracy', 'x10', 0.0)
  assert v.status == 'PASS' and '1 of 2 conclusions hold, 1 fade into the noise' in v.summary


def test_the_advice_for_each_trends_warning_says_what_that_warning_found():
  """Every trends_hold WARN's advice said the two orders differ, also where they are the
  same (nothing to check, a group that diverged)."""
  same = ['a', 'b'], [0.9, 0.8], [0.9, 0.8]
  nothing = trends.verdict(*same, [], 'eval_accuracy', 'x10', 0.5)
  assert nothing.evidence['small_order'] == nothing.evidence['large_order']
  _, why = advice.act_or_ignore('scale_up', dataclasses.asdict(nothing))
  assert 'add seeds' in why and 'is not the order' not in why, why
  diverged = trends.verdict(*same, [], 'eval_accuracy', 'x10', 0.5, {'wide': 'NaN at step 3'})
  assert diverged.status == 'WARN' and diverged.cause == 'run_diverged'
  assert diverged.summary.startswith('wide diverged at the larger scale (NaN at step 3); of '
                                     'the others: nothing to check')
  _, why = advice.act_or_ignore('scale_up', dataclasses.asdict(diverged))
  assert why.startswith('wide diverged at the larger scale') and 'is not the order' not in why
  groups, small = ['a', 'b', 'c', 'd'], [0.9, 0.8, 0.7, 0.6]
  swapped = trends.verdict(groups, small, [0.6, 0.7, 0.8, 0.9], [], 'eval_accuracy', 'x10', 0.5)
  _, why = advice.act_or_ignore('scale_up', dataclasses.asdict(swapped))
  assert swapped.cause == 'trends_ranking' and 'is not the order at the larger' in why


def test_a_folder_without_a_finished_compare_or_tune_stage_is_refused(compared, tmp_path):
  config, workdir = compared
  with pytest.raises(UserError, match='holds no compare stage'):
    scaled_up(config, str(tmp_path), tmp_path / 'a', {'num_train_steps': 'x2'})
  stage = config.copy_and_resolve_references()
  stage.scale_up.source = 'tune'
  with pytest.raises(UserError, match='holds no tune stage'):
    scaled_up(stage, workdir, tmp_path / 'b', {'num_train_steps': 'x2'})
  unfinished = tmp_path / 'unfinished'
  os.makedirs(unfinished / 'compare')
  found = read_result(os.path.join(workdir, 'compare', 'result.json'))
  found.finished = False
  json.dump(found.to_json(), open(unfinished / 'compare' / 'result.json', 'w'))
  with pytest.raises(UserError, match='its compare stage has not finished'):
    scaled_up(config, str(unfinished), tmp_path / 'c', {'num_train_steps': 'x2'})
  run_config = config.copy_and_resolve_references()
  run_config.model.name, run_config.model.width = 'cnn1d', None  # its reference width
  stage = config.copy_and_resolve_references()
  stage.scale_up.changes = '{"model.width": "x2"}'
  assert scale_up.scaled(stage, run_config).model.width == 2 * models.reference_width('cnn1d')
  stage.scale_up.changes = '{"augment.shift": "x2"}'  # 0 x2 is 0: nothing would change
  with pytest.raises(UserError, match='augment.shift x2 leaves augment.shift at 0 in this run'):
    scale_up.scaled(stage, run_config)
