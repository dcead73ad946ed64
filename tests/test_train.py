import glob
import os
import re

import jax
import numpy as np
import pytest

from conftest import read_summary, train_and_evaluate
from recipe_jax.engine import mesh
from recipe_jax.errors import DivergenceError, UserError
from recipe_jax.engine import loop
from recipe_jax.engine import evaluate
from recipe_jax.verdicts import read_result

SUMMARY_KEYS = {'stage', 'step', 'train_loss', 'eval_loss', 'eval_accuracy', 'best_eval_accuracy',
                'params_sha256', 'wall_s', 'examples_per_s'}


def test_same_config_and_seed_give_bit_identical_params(small_config, tmp_path):
  first = train_and_evaluate(small_config, str(tmp_path / 'a'))
  second = train_and_evaluate(small_config, str(tmp_path / 'b'))
  assert SUMMARY_KEYS <= set(first)
  assert first['params_sha256'] == second['params_sha256']
  small_config.seed = 1
  other_seed = train_and_evaluate(small_config, str(tmp_path / 'c'))
  assert other_seed['params_sha256'] != first['params_sha256']


def test_short_mnist1d_training_clearly_beats_chance(small_config, tmp_path):
  small_config.num_train_steps = 400
  small_config.eval_every_steps = 200
  summary = train_and_evaluate(small_config, str(tmp_path))
  assert summary['test_accuracy'] > 0.4  # chance is 0.1
  assert summary['train_loss'] < 1.5  # log(10) = 2.30 at chance
  assert summary['best_eval_accuracy'] >= summary['eval_accuracy'] > 0.4


def test_resuming_a_finished_run_with_more_steps_matches_one_long_run(small_config, tmp_path):
  train_and_evaluate(small_config, str(tmp_path / 'resumed'))  # 60 steps
  small_config.num_train_steps = 90
  resumed = train_and_evaluate(small_config, str(tmp_path / 'resumed'))
  straight = train_and_evaluate(small_config, str(tmp_path / 'straight'))
  assert resumed['resumed_from_step'] == 60 and straight['resumed_from_step'] is None
  assert resumed['params_sha256'] == straight['params_sha256']


def test_corrupted_latest_checkpoint_falls_back_to_the_one_before(small_config, tmp_path, caplog):
  small_config.num_train_steps = 90  # checkpoints at 30, 60, 90
  workdir = str(tmp_path / 'run')
  train_and_evaluate(small_config, workdir)
  for path in glob.glob(f'{workdir}/checkpoints/90/state/**/*', recursive=True):
    if os.path.isfile(path):
      with open(path, 'wb') as f:
        f.write(b'not a checkpoint')
  small_config.num_train_steps = 120
  with caplog.at_level('WARNING'):
    resumed = train_and_evaluate(small_config, workdir)
  assert 'checkpoint at step 90 failed to restore' in caplog.text
  assert resumed['resumed_from_step'] == 60
  assert os.path.isdir(f'{workdir}/checkpoints_corrupt/90')  # kept for a post-mortem
  straight = train_and_evaluate(small_config, str(tmp_path / 'straight'))
  assert resumed['params_sha256'] == straight['params_sha256']


def test_divergence_rule_names_the_first_bad_step():
  ok = [(1, 2.3), (2, 2.0), (3, 150.0)]
  loop.check_losses(ok, initial_loss=2.3, factor=100, learning_rate=0.01, last_checkpoint=None)
  with pytest.raises(DivergenceError, match='diverged at step 3: loss nan is not finite.*'
                     'learning rate \\(0.01\\).*no checkpoint was saved'):
    loop.check_losses([(2, 2.0), (3, float('nan')), (4, float('inf'))], 2.3, 100, 0.01, None)
  with pytest.raises(DivergenceError, match='step 5: loss 300 exceeds 100 x the initial loss 2.3.*'
                     'last good checkpoint: step 4'):
    loop.check_losses([(5, 300.0)], 2.3, 100, 0.01, last_checkpoint=4)


def test_eval_padding_masks_the_extra_examples():
  x, y, mask = evaluate.pad_for_eval(np.ones((7, 3), np.float32), np.arange(7), 4)
  assert x.shape == (8, 3) and mask.tolist() == [1] * 7 + [0]


def test_a_split_of_several_padded_eval_batches_counts_only_its_real_examples():
  """10 examples in eval batches of 4: 3 batches, 2 padded rows. A padded row (zeros, label 0)
  would count as correct (zero logits: argmax 0) and add log 3 to the loss if the mask leaked."""
  import flax.linen as nn
  import optax
  from recipe_jax.engine import state as state_lib
  from recipe_jax.model import losses
  model = nn.Dense(3, use_bias=False)
  state = state_lib.init_state(model, optax.sgd(0.1), (5,), 0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 5)).astype(np.float32)
  logits = np.asarray(model.apply({'params': state.params}, x))
  y = (logits.argmax(1) + np.array([0] * 3 + [1] * 7)) % 3  # the model is right on 3 of 10
  evaluate_split = evaluate.compile_evaluator(model, mesh.make_mesh(), state, x, y, 4,
                                              losses.cross_entropy)
  found = evaluate_split(state)
  assert evaluate.eval_batch_size(10, 4, jax.device_count()) == 4
  assert found['accuracy'] == pytest.approx(0.3)
  assert found['loss'] == pytest.approx(float(np.mean(losses.cross_entropy(logits, y))), rel=1e-5)


def test_no_validation_split_is_a_user_error(small_config, tmp_path):
  small_config.dataset.val_fraction = 0.0
  with pytest.raises(UserError, match='val_fraction=0.0 leaves no validation examples'):
    train_and_evaluate(small_config, str(tmp_path))


def test_batches_must_split_evenly_over_devices():
  mesh.require_divisible(2, {'batch_size': 4})
  with pytest.raises(UserError, match=r'sanity.overfit_examples=3 must be divisible .* \(2\)'):
    mesh.require_divisible(2, {'batch_size': 4, 'sanity.overfit_examples': 3})


def test_train_stage_writes_its_result_with_verdicts(small_config, tmp_path):
  from recipe_jax.stages import train
  result = train.run(small_config, str(tmp_path))
  saved = read_result(str(tmp_path / 'train' / 'result.json'))
  assert saved == result and saved.finished
  assert [v.check for v in saved.verdicts][:2] == ['finished', 'train_val_gap']
  assert saved.verdicts[0].status == 'PASS'
  assert saved.metrics['test_accuracy'] == read_summary(tmp_path)['test_accuracy']
  assert all(os.path.exists(tmp_path / f) for f in saved.files)
  small_config.num_train_steps = 90  # leave it training: continues at the same constant rate
  extended = train.run(small_config, str(tmp_path))
  [verdict] = [v for v in extended.verdicts if v.check == 'extended']
  assert verdict.status == 'PASS' and verdict.evidence['from_step'] == 60
  assert read_summary(tmp_path)['resumed_from_step'] == 60


def test_extending_a_decaying_schedule_warns_that_its_shape_changes(small_config):
  from recipe_jax.stages import train
  small_config.optimizer.schedule = 'cosine'
  small_config.num_train_steps = 200
  verdict = train.extension_verdict({'finished': True, 'step': 100}, small_config)
  assert verdict.status == 'WARN' and 'stretched' in verdict.summary
  assert verdict.evidence['learning_rate_resumed'] > 10 * verdict.evidence['learning_rate_at_end']
  assert train.extension_verdict({'finished': True, 'step': 200}, small_config) is None
  assert train.extension_verdict({'finished': False, 'step': 100}, small_config) is None


def test_train_verdicts_warn_on_an_overfitting_gap_and_a_preempted_run():
  from recipe_jax.stages import train
  summary = {'finished': True, 'step': 100, 'stopped_early': False, 'train_accuracy': 1.0,
             'eval_accuracy': 0.8}
  finished, gap = train.verdicts(summary, max_gap=0.1)
  assert finished.status == 'PASS' and gap.status == 'WARN' and 'overfits' in gap.summary
  assert train.verdicts({**summary, 'eval_accuracy': 0.95}, max_gap=0.1)[1].status == 'PASS'
  [stopped] = train.verdicts({**summary, 'finished': False}, max_gap=0.1)
  assert stopped.status == 'WARN' and 'resumes' in stopped.summary


def test_compiled_program_caches_are_bounded_and_forget_empties_them():
  """XLA:CPU executables each hold memory mappings: caches without bound crashed a long
  process past vm.max_map_count (SIGSEGV in CI)."""
  from recipe_jax.engine import compiled, state, steps
  registered = set(map(id, compiled._caches))
  for engine_cache in (state.jitted_logits, steps.compile_train_step, evaluate.make_eval_fn):
    assert id(engine_cache) in registered
  assert all(c.cache_info().maxsize == compiled.PROGRAMS_PER_CACHE for c in compiled._caches)
  add = compiled.cached(lambda n: jax.jit(lambda x: x + n))
  assert sum(float(add(n)(1.0)) for n in range(3 * compiled.PROGRAMS_PER_CACHE)) > 0
  assert add.cache_info().currsize == compiled.PROGRAMS_PER_CACHE
  compiled.forget()
  assert all(c.cache_info().currsize == 0 for c in compiled._caches)
  compiled._caches.remove(add)


def test_a_gap_that_a_block_of_relabelled_rows_explains_is_not_called_overfitting():
  from test_data_checks import structured_labels
  from recipe_jax.diagnose import data_checks
  from recipe_jax.verdicts import Verdict
  from recipe_jax.stages import train
  gap = train._gap_verdict({'train_accuracy': 1.0, 'eval_accuracy': 0.8}, 0.05)
  assert 'regularise' in gap.summary
  given, probabilities = structured_labels(remapped_classes=10)
  structure = data_checks.label_structure(given, probabilities.argmax(1), np.arange(len(given)), 10)
  confusions = Verdict('confusions', 'WARN', '...', {'label_structure': structure})
  explained = train.gap_from_labels(gap, [confusions])
  assert explained.status == 'WARN' and explained.cause == 'gap_from_labels'
  assert 'the gap comes from the labels' in explained.summary and 'regularis' not in \
      explained.summary.replace('regularising would only fit them worse', '')
  assert 'rows 0 to 699' in explained.summary
  # the block explains only part of a larger gap: the rest is overfitting, said so
  agreeing = max(structure['block']['accuracy_inside'], structure['block']['accuracy_outside'])
  wide = train._gap_verdict({'train_accuracy': 1.0, 'eval_accuracy': 0.5}, 0.05)
  wide.evidence['train_accuracy'] = agreeing + 0.3
  part = train.gap_from_labels(wide, [confusions])
  assert part.cause == 'gap_from_labels_and_overfitting', part.summary
  assert 'part of it comes from the labels' in part.summary and 'overfits too' in part.summary
  assert 'the gap comes from the labels' not in part.summary
  import dataclasses
  from recipe_jax.report import advice
  _, why = advice.act_or_ignore('train', dataclasses.asdict(part))
  assert why.startswith('fix the labels first') and 'then regularise' in why, why
  _, why = advice.act_or_ignore('train', dataclasses.asdict(explained))
  assert 'regularising would not help' in why
  given, probabilities = structured_labels(pair=(7, 1))  # no block: overfitting advice stays
  structure = data_checks.label_structure(given, probabilities.argmax(1), np.arange(len(given)), 10)
  confusions = Verdict('confusions', 'WARN', '...', {'label_structure': structure})
  assert train.gap_from_labels(gap, [confusions]) is gap


def monitored_run(small_config, tmp_path, model):
  small_config.model.name = model
  small_config.num_train_steps, small_config.eval_every_steps = 120, 20
  small_config.optimizer.learning_rate = 1e-3
  from recipe_jax.stages import train
  return {v.check: v for v in train.run(small_config, str(tmp_path)).verdicts}


def test_training_monitor_warns_when_a_layer_dies_mid_run_and_logs_every_layer(
    small_config, tmp_path):
  verdicts = monitored_run(small_config, tmp_path, 'helpers.planted_bugs:DriftingBias')
  health = verdicts['layer_health']
  assert health.status == 'WARN', health.summary
  # the shifted ReLUs are Dense_0's units; with them gone, Dense_1's die too and the first
  # layer's gradient vanishes: whichever it names first, it names a layer and the step
  assert re.search(r"Dense_[01]'s ReLU units: \d+% dead at step \d+ "
                   r'\(\d+% at step 20\)', health.summary), health.summary
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  tags = set(events.Tags()['tensors'])
  for tag in ('layers/grad_norm/Dense_0', 'layers/update_ratio/Dense_2',
              'layers/dead_fraction/Dense_0', 'layers/grad_first_over_last'):
    assert tag in tags, sorted(tags)


def test_training_monitor_stays_quiet_on_a_clean_model(small_config, tmp_path):
  health = monitored_run(small_config, tmp_path, 'helpers.planted_bugs:Correct')['layer_health']
  assert health.status == 'PASS' and 'first / last layer gradient' in health.summary


def test_monitor_names_what_got_worse_and_only_that():
  from recipe_jax.diagnose import inside, monitor
  first = {'layers/dead_fraction/Dense_1': 0.3, 'layers/grad_first_over_last': 0.5}
  same = monitor.worse(first, 20, first, 40, 1e3, 'Dense_0', 0.01)
  assert same == []
  now = {'layers/dead_fraction/Dense_1': 0.95, 'layers/grad_first_over_last': 2e-4}
  found = dict(monitor.worse(first, 20, now, 40, 1e3, 'Dense_0', 0.01))
  assert "Dense_1's ReLU units: 95% dead" in found[('dead', 'Dense_1')]
  # hedged, with the other causes, in the same words as sanity's dead_units
  assert inside.died_because(0.01) in found[('dead', 'Dense_1')]
  assert 'may be too high' in inside.died_because(0.01) and 'drift' in inside.died_because(0.01)
  assert 'fell to 0.0002x' in found[('vanishing',)] and 'Dense_0' in found[('vanishing',)]
  near = {'layers/dead_fraction/Dense_1': 0.89, 'layers/grad_first_over_last': 1.1e-3}
  assert monitor.worse(first, 20, near, 40, 1e3, 'Dense_0', 0.01) == []  # just under each threshold
  dead_from_start = {'layers/dead_fraction/Dense_1': 0.95}  # sanity's business, not a change
  assert monitor.worse(dead_from_start, 20, dead_from_start, 40, 1e3, 'Dense_0', 0.01) == []
