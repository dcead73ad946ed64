"""The diagnosis names the cause of planted defects from the sanity stage's own measurements,
end to end on tiny synthetic data; and stays quiet on clean models."""
import numpy as np
import pytest
from test_conformance import synthetic_npz

from recipe_jax.config import defaults
from recipe_jax.diagnose import diagnosis, registry
from recipe_jax import words as report_words
from recipe_jax.verdicts import Verdict
from recipe_jax.stages import sanity

# planted defect -> (config overrides, words the diagnosis verdict must contain)
PLANTED = {
    'ten sigmoid layers': ({'model.name': 'helpers.planted_bugs:DeepSigmoid'},
                           ['most likely cause: vanishing gradients']),
    'ReLU layers initialised 2.5x': ({'model.name': 'helpers.planted_bugs:ExplodingInit'},
                                     ['most likely cause: exploding gradients']),
    'biases initialised at -3': ({'model.name': 'helpers.planted_bugs:NegativeBias'},
                                 ['most likely cause: dying ReLU', 'large negative bias']),
    'tanh weights 6x': ({'model.name': 'helpers.planted_bugs:SaturatedTanh'},
                        ['most likely cause: saturated units']),
    'every weight the same': ({'model.name': 'helpers.planted_bugs:ConstantInit'},
                              ['most likely cause: symmetric init']),
    'one_hot(labels - 1) in the loss': ({'loss': 'helpers.planted_bugs:shifted_targets_loss'},
                                        ['most likely cause: targets differ from the labels']),
    'learning rate 1e-7': ({'optimizer.learning_rate': 1e-7},
                           ['most likely cause: learning rate far too small']),
    'labels rolled inside the loss': ({'loss': 'helpers.planted_bugs:labels_rolled_loss'},
                                      ['most likely cause: targets not a function of the inputs']),
    'softmax before the loss': ({'model.name': 'helpers.planted_bugs:SoftmaxOutput'},
                                ['most likely cause: logits squashed before the loss']),
    'layer multiplied by zero': ({'model.name': 'helpers.planted_bugs:DeadLayer'},
                                 ['most likely cause: inputs do not reach the loss']),
}


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('diagnosis') / 'sequences.npz')
  synthetic_npz(path, 'sequence')
  return path


def config(npz_path, **overrides):
  c = defaults.get_config()
  c.stage = 'sanity'
  c.dataset.name = f'npz:{npz_path}'
  c.dataset.val_fraction = 0.25
  c.batch_size, c.eval_batch_size = 16, 48
  c.optimizer.learning_rate = 1e-2
  c.sanity.steps, c.sanity.seed_steps, c.sanity.dynamics_every = 60, 2, 20
  c.sanity.overfit_steps = 100
  c.sanity.init_loss_batches, c.sanity.init_loss_batch_size = 4, 16
  c.update_from_flattened_dict(overrides)
  return c


@pytest.mark.parametrize('defect', PLANTED)
def test_planted_defect_is_diagnosed_by_name(defect, npz, tmp_path):
  overrides, words = PLANTED[defect]
  verdicts = {v.check: v for v in sanity.run(config(npz, **overrides), str(tmp_path)).verdicts}
  found = verdicts['diagnosis']
  assert found.status in ('FAIL', 'WARN')
  for w in words:
    assert w in found.summary, found.summary
  for v in verdicts.values():  # every cause is one its check registers
    assert v.cause is None or v.cause in registry.find('sanity', v.check).causes, v
  for symptom in found.evidence['symptoms']:  # each failed symptom points at the same cause
    assert verdicts[symptom].cause == found.cause
    assert words[0] in report_words.sentence(verdicts[symptom])


@pytest.mark.parametrize('model', ['helpers.planted_bugs:Correct', 'mlp', 'cnn1d'])
def test_clean_models_get_no_diagnosis(model, npz, tmp_path):
  verdicts = {v.check: v for v in sanity.run(config(npz, **{'model.name': model}),
                                             str(tmp_path)).verdicts}
  assert verdicts['diagnosis'].status == 'PASS', verdicts['diagnosis'].summary
  for check in ('gradient_flow', 'dead_units', 'saturation', 'symmetric_init'):
    assert verdicts[check].status == 'PASS', verdicts[check].summary


def symptom(check, status='FAIL', cause=None, **evidence):
  return Verdict(check, status, f'{check} {status.lower()}', evidence, cause=cause)


def test_no_measured_cause_is_called_ambiguous_and_lists_what_was_ruled_out():
  verdicts = diagnosis.explain([
      symptom('dumb_baselines'), symptom('overfit_one_batch', 'PASS'),
      symptom('gradient_flow', 'PASS', first_over_last={'init': 0.5}),
      symptom('dead_units', 'PASS'), symptom('saturation', 'PASS')])
  found = verdicts[-1]
  # overfit PASS + dumb FAIL: the labels, not the net
  assert found.status == 'FAIL' and 'labels do not go with the inputs' in found.summary
  assert 'dead ReLUs' in found.summary and 'too little capacity' in found.summary
  assert verdicts[0].cause == found.cause == 'labels_not_with_inputs'
  assert 'most likely cause: labels do not go with the inputs' in report_words.sentence(
      verdicts[0])
  assert verdicts[0].summary == 'dumb_baselines fail'  # the check's own sentence, not rewritten

  verdicts = diagnosis.explain([symptom('decreasing_loss'), symptom('dead_units', 'PASS')])
  assert verdicts[-1].summary.startswith('ambiguous: decreasing_loss failed')
  assert verdicts[0].cause == verdicts[-1].cause == 'ambiguous'
  assert 'ambiguous' in report_words.sentence(verdicts[0])


def test_a_cause_without_a_failed_symptom_warns_and_ranks_first_the_most_specific():
  flow = Verdict('gradient_flow', 'FAIL', 'vanishing gradients: ...',
                 {'finding': 'the gradient shrinks 1e4x from Dense_9 to Dense_0'})
  dead = Verdict('dead_units', 'WARN', 'dying ReLU: ...',
                 {'finding': '95% of Dense_1 units died', 'dead_at_init': False})
  quiet = diagnosis.explain([flow, dead])[-1]
  assert quiet.status == 'WARN' and quiet.summary.startswith('no symptom failed')
  assert 'vanishing gradients' in quiet.summary
  # units that die during the run are a cause only once a symptom fails
  assert 'dying ReLU' not in quiet.summary
  loud = diagnosis.explain([symptom('decreasing_loss'), dead])[-1]
  assert loud.status == 'FAIL' and 'most likely cause: dying ReLU' in loud.summary


def test_no_verdict_rules_out_what_it_names_and_each_also_cause_shows_its_evidence():
  """A rate far too small, named from the update ratio, while no rate of the sweep fits one
  batch: the sweep must not be listed as ruling the learning rate out."""
  sweep = {0.1: {'fitted': False, 'final_loss': 1.4, 'final_accuracy': 0.25},
           10.0: {'fitted': False, 'final_loss': 1.4, 'final_accuracy': 0.25}}
  verdicts = diagnosis.explain([
      symptom('decreasing_loss', relative_drop=0.0), symptom('overfit_one_batch', 'FAIL',
                                                             losses=[1.4] * 10,
                                                             accuracies=[0.25] * 10,
                                                             max_loss=0.05, final_loss=1.4),
      symptom('gradient_flow', 'PASS', first_over_last={'init': 0.5}),
      symptom('gradients', 'PASS'), symptom('dead_units', 'PASS')],
      sweep, update_ratio=1e-7, configured_lr=1e-7)
  found = verdicts[-1].summary
  assert found.startswith('most likely cause: learning rate far too small'), found
  assert 'the learning rate (x' not in found.split('Ruled out')[1]
  also = found.split('Also: ')[1].split('. Ruled out')[0]
  assert all(' (' in cause for cause in also.split('; ')), also  # each with its evidence


def test_logits_squashed_needs_bounded_logits_at_their_floor():
  """One batch stalls at 100% accuracy: squashed only when the logits' spread is bounded and
  the loss sits at the floor that spread allows; not for logits that never moved."""
  def overfit(final_loss, spread):
    return Verdict('overfit_one_batch', 'FAIL', '...', {
        'losses': [2.3] * 5 + [final_loss] * 5, 'accuracies': [1.0] * 10, 'max_loss': 0.05,
        'final_loss': final_loss, 'eval_loss': final_loss, 'logit_range': spread,
        'squashed_floor': float(np.log1p(9 * np.exp(-spread)))})
  squashed = diagnosis.squashed_logits({'overfit_one_batch': overfit(1.46, 1.0)})
  assert squashed is not None and 'spread over at most 1' in squashed.because
  assert diagnosis.squashed_logits({'overfit_one_batch': overfit(0.07, 9.0)}) is None  # dropout
  unmoved = overfit(2.3, 0.1)
  unmoved.evidence['losses'] = [2.3] * 10
  assert diagnosis.squashed_logits({'overfit_one_batch': unmoved}) is None


def test_a_rate_the_sweep_shows_far_better_is_named_even_without_a_fit():
  """At 100x the rate one batch's loss falls to a fifth of the configured rate's (not fitted):
  the learning rate, not 'targets not a function of the inputs'."""
  overfit = symptom('overfit_one_batch', 'FAIL', losses=[2.3] * 5 + [2.1] * 5,
                    accuracies=[0.25] * 10, max_loss=0.05, final_loss=2.1)
  checks_ok = [symptom('gradient_flow', 'PASS', first_over_last={'init': 0.5}),
               symptom('gradients', 'PASS')]
  sweep = {10.0: {'fitted': False, 'final_loss': 1.9, 'final_accuracy': 0.5},
           100.0: {'fitted': False, 'final_loss': 0.4, 'final_accuracy': 0.875}}
  found = diagnosis.explain([overfit, *checks_ok], sweep, update_ratio=1e-4,
                            configured_lr=1e-5)[-1].summary
  assert found.startswith('most likely cause: learning rate far too small'), found
  assert "at 100x the rate one batch's loss falls to 0.4, against 2.1 at 1e-05" in found
  sweep[100.0]['final_loss'] = 1.5  # not under half: no evidence for the rate
  found = diagnosis.explain([overfit, *checks_ok], sweep, update_ratio=1e-4,
                            configured_lr=1e-5)[-1].summary
  assert not found.startswith('most likely cause: learning rate'), found


def test_weights_that_stopped_because_their_units_died_are_not_a_rate_too_small():
  """The generator's learning rate x1000 on a GAP CNN: every ReLU of a layer died in the first
  steps, no gradient moves the weights (update ratio 0), and the diagnosis said 'learning
  rate far too small'. The sweep shows smaller rates fit: the rate is too large."""
  overfit = symptom('overfit_one_batch', 'FAIL', losses=[2.3] * 10, accuracies=[0.1] * 10,
                    max_loss=0.05, final_loss=2.3)
  checks_ok = [symptom('gradient_flow', 'PASS', first_over_last={'init': 0.5}),
               symptom('gradients', 'PASS')]
  died = Verdict('dead_units', 'FAIL', 'dying ReLU: ...',
                 {'finding': '100% of Conv_1 units died', 'dead_at_init': False})
  sweep = {0.1: {'fitted': True, 'final_loss': 0.01, 'final_accuracy': 1.0},
           10.0: {'fitted': False, 'final_loss': 2.3, 'final_accuracy': 0.1}}
  found = diagnosis.explain([overfit, died, *checks_ok], sweep, update_ratio=0.0,
                            configured_lr=1.0)[-1].summary
  assert found.startswith('most likely cause: learning rate too large'), found
  assert 'far too small' not in found
  # the same tiny update ratio with healthy units is a rate too small
  alive = Verdict('dead_units', 'PASS', '...', {'dead_at_init': False})
  found = diagnosis.explain([overfit, alive, *checks_ok], {}, update_ratio=1e-7,
                            configured_lr=1e-7)[-1].summary
  assert found.startswith('most likely cause: learning rate far too small'), found


def test_a_flipped_loss_sign_is_named_before_what_one_batch_s_curve_suggests():
  overfit = symptom('overfit_one_batch', 'FAIL', losses=[2.3] * 5 + [-120.0] * 5,
                    accuracies=[0.25] * 5 + [0.0] * 5, max_loss=0.05, final_loss=-120.0)
  signature = symptom('loss_signature', 'FAIL', cause='loss_maximised', floor=-300.0)
  found = diagnosis.explain([overfit, signature])[-1].summary
  assert found.startswith('most likely cause: loss maximised (a sign flipped)'), found
  assert 'targets differ' not in found


def test_targets_that_differ_are_named_with_the_share_of_examples_the_loss_moves():
  signature = symptom('loss_signature', 'FAIL', cause='targets_differ', lowest_at_labels=0.7,
                      most_common_shift=1)
  found = diagnosis.explain([symptom('overfit_one_batch'), signature])[-1].summary
  assert found.startswith('most likely cause: targets differ from the labels'), found
  assert 'for 30% of the examples (the most common: label +1)' in found
