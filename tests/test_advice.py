"""What to do next: act-or-ignore lines and next steps from planted result dicts, each rule with
a case beside its boundary; clean results ask for nothing but scaling up."""
import math

import pytest

from recipe_jax.diagnose import noise
from recipe_jax.report import advice


def result(stage, *verdicts, metrics=None):
  return {'stage': stage, 'metrics': metrics or {},
          'verdicts': [{'check': c, 'status': s, 'summary': summary, 'evidence': e,
                        'cause': cause[0] if cause else None}
                       for c, s, summary, e, *cause in verdicts]}


def variant(name, delta, seed_noise, seeds=2, noise=None, status='WARN', split_noise=0.0):
  level = max(seed_noise, split_noise)
  noise = noise or ('inside noise' if abs(delta) <= level else 'beyond noise')
  return (f'variant_{name}', status, '', {'delta': delta, 'noise_level': level, 'seeds': seeds,
                                          'seed_noise_level': seed_noise,
                                          'split_noise_level': split_noise, 'noise': noise})


@pytest.mark.parametrize('delta, seed_noise, split_noise, seeds, needed', [
    (0.004, 0.01, 0.0, 2, 13),  # 2 * (0.01 / 0.004)^2 = 12.5
    (0.0099, 0.01, 0.0, 2, 3),  # just inside: one more seed would do
    (0.004, 0.01, 0.0, 5, 32),
    (0.004, 0.01, 0.0039, 2, 13),  # the split's part is below the difference: seeds can do it
    (0.004, 0.01, 0.004, 2, math.inf),  # the split's part alone covers it: no number of seeds
    (0.0, 0.01, 0.0, 2, math.inf),
    (0.004, math.inf, math.inf, 1, None)])
def test_seeds_to_resolve_a_difference_inside_the_noise(delta, seed_noise, split_noise, seeds,
                                                        needed):
  assert noise.seeds_to_resolve(delta, seed_noise, split_noise, seeds) == needed


def test_a_difference_inside_the_validation_splits_error_asks_for_a_larger_split_not_seeds():
  # MNIST-1D's recipe: +0.0525 against a floor of 0.0559 from 200 validation examples
  found = [result('compare', variant('dropout', 0.0525, 0.018, split_noise=0.0559))]
  [(_, _, _, act, why)] = advice.lines(found)
  assert act is True and 'which more seeds cannot lower: about 1.2x the validation' in why
  steps = advice.next_steps(found)
  assert not any('more seeds' in s for s in steps)
  assert 'a larger validation split to judge dropout: its +0.0525' in steps[0]
  assert noise.split_factor(0.05, 0.1) == '4' and noise.split_factor(0.1, 0.1) == '1'
  nothing = advice.act_or_ignore('compare', dict(zip(
      ('check', 'status', 'summary', 'evidence'), variant('same', 0.0, 0.01, split_noise=0.02))))
  assert nothing == (False, 'no difference at all from the baseline: the change does nothing here')


def test_a_variant_inside_the_noise_asks_for_the_seeds_that_would_resolve_it():
  found = [result('compare', variant('dropout', 0.004, 0.01))]
  [(stage, check, status, act, why)] = advice.lines(found)
  assert (stage, check, status, act) == ('compare', 'variant_dropout', 'WARN', True)
  assert 'about 13 seeds per variant' in why and 'compare.seeds=13' in why
  assert any('more seeds for dropout' in s and 'about 13 per variant' in s
             for s in advice.next_steps(found))


def test_a_variant_that_is_worse_beyond_noise_is_ignored_and_one_seed_asks_for_two():
  worse = advice.act_or_ignore('compare', dict(zip(
      ('check', 'status', 'summary', 'evidence'), variant('narrow', -0.03, 0.01))))
  assert worse[0] is False and 'keep the baseline' in worse[1]
  one_seed = advice.act_or_ignore('compare', dict(zip(
      ('check', 'status', 'summary', 'evidence'), variant('narrow', 0.01, math.inf, seeds=1,
                                                          split_noise=math.inf,
                                                          noise='inside noise'))))
  assert one_seed[0] is True and 'compare.seeds >= 2' in one_seed[1]


def test_a_rising_learning_curve_asks_for_data_with_its_predicted_gain():
  rising = result('data_scaling', ('more_data', 'PASS', 'doubling the data would gain ...',
                                   {'gain_2x': 0.021, 'gain_2x_range': [0.015, 0.027]}))
  assert any(s.startswith('more data: doubling the training set would gain about 2.1%')
             for s in advice.next_steps([rising]))
  flat = result('data_scaling', ('more_data', 'PASS', 'any words',  # read: the evidence
                                 {'gain_2x': 0.001, 'gain_2x_range': [0.0, 0.002],
                                  'flattened': True}))
  assert any(s.startswith('not more data') for s in advice.next_steps([flat]))


def test_a_model_that_cannot_fit_asks_for_capacity_after_fixing_the_fail():
  steps = advice.next_steps([result('overfit', ('fits_training_set', 'FAIL', '', {}))])
  assert steps[0].startswith('fix what FAILed') and 'overfit/fits_training_set' in steps[0]
  assert steps[1].startswith('capacity')


@pytest.mark.parametrize('stage, verdict, act, words', [
    ('lr_find', ('learning_rate', 'WARN', '', {'per_seed': [{'diverged_at_lr': None}]}), False,
     'only the point where it diverges was not reached'),
    ('lr_find', ('learning_rate', 'WARN', '', {'spread_factor': 3.1, 'max_spread': 3.0,
                                               'per_seed': [{'diverged_at_lr': None}]}), True,
     'the seeds disagree'),  # spread first: the seeds disagree whether or not they diverged
    ('lr_find', ('learning_rate', 'WARN', '', {'spread_factor': 2.9, 'max_spread': 3.0,
                                               'per_seed': [{'diverged_at_lr': None}]}), False,
     'not reached'),
    ('evaluate', ('calibration', 'WARN', '', {}), True, 'if you use the probabilities'),
    ('squeeze', ('test_saturation', 'WARN', '', {
        'models': ['ensemble of 3', 'best member (seed_0)'], 'runner_up': 'best member (seed_0)',
        'examples_to_resolve': 7846.5, 'p_value': 0.42, 'examples': 1000, 'errors_left': 30}),
     True, 'cannot tell ensemble of 3 from best member (seed_0): about 7,846 test examples (now '
     '1000)'),
    ('evaluate', ('test_saturation', 'WARN', '', {'errors_left': 12, 'examples': 1000}), True,
     'only 12 test errors are left'),
    ('sanity', ('activations_seen', 'WARN', '', {}), False, 'nn.scan'),
    ('sanity', ('loss_at_init', 'WARN', '', {}), False, 'first steps only shrink them'),
    ('sanity', ('loss_at_init', 'FAIL', '', {}), True, 'a FAIL'),
    ('squeeze', ('tta', 'WARN', '', {}), False, 'did not pay'),
    ('squeeze', ('ensemble', 'WARN', '', {}), True, 'broken member'),
    ('train', ('train_val_gap', 'WARN', '', {}, 'gap_from_labels'), True, 'fix the labels first'),
    ('train', ('train_val_gap', 'WARN', '', {'gap': 0.2}), True, 'regularise'),
    ('inspect', ('planted_unknown_check', 'WARN', '', {}), True, 'no rule says'),
    ('inspect', ('outliers', 'WARN', '', {'count': 1, 'examples': 3800}), False,
     '1 of 3800 train examples (0.026%): a few unusual inputs are normal'),
    ('inspect', ('outliers', 'WARN', '', {'count': 38, 'examples': 3800}), False, '(1%)'),
    ('inspect', ('outliers', 'WARN', '', {'count': 39, 'examples': 3800}), True,
     'corrupted block'),
    ('inspect', ('input_blocks_train', 'WARN', '', {'first_row': 1200,
                                                    'last_row': 1599}, 'input_block'), True,
     'rows 1200 to 1599 differ'),
    ('inspect', ('input_blocks_test', 'WARN', '', {}, 'input_trend'), False, 'split by position'),
    ('sanity', ('loss_signature', 'WARN', '', {'floor': 0.5}, 'loss_floor'), False,
     'soft targets'),
    ('sanity', ('loss_signature', 'WARN', '', {'scale': 0.1}, 'loss_scaled'), False,
     'trains the same under Adam'),
    ('sanity', ('loss_signature', 'FAIL', '', {}, 'targets_differ'), True, 'a FAIL'),
    ('sanity', ('overfit_one_batch', 'WARN', '', {}), True, 'more sanity.overfit_steps'),
])
def test_every_warn_and_fail_gets_act_or_ignore_with_a_reason(stage, verdict, act, words):
  decided = advice.act_or_ignore(stage, dict(zip(
      ('check', 'status', 'summary', 'evidence', 'cause'), verdict)))
  assert decided[0] is act and words in decided[1]


def test_the_ensemble_is_named_with_its_gain_over_its_average_member_unless_it_warns():
  metrics = {'ensemble_test_accuracy': 0.986, 'mean_member_test_accuracy': 0.973}
  squeeze = result('squeeze', ('ensemble', 'PASS', '', {}), metrics=metrics)
  assert advice.next_steps([squeeze])[0] == ('the ensemble is the model to use: test accuracy '
                                             '98.6%, +1.3 points over its average member')
  broken = result('squeeze', ('ensemble', 'WARN', '', {}), metrics=metrics)
  assert not any('the ensemble is the model to use' in s for s in advice.next_steps([broken]))


def test_a_gap_from_the_labels_asks_to_fix_them_not_to_regularise():
  labels = result('train', ('train_val_gap', 'WARN', '', {'gap': 0.2}, 'gap_from_labels'))
  steps = advice.next_steps([labels])
  assert steps[0].startswith('fix the labels') and not any('regularise' in s for s in steps)
  overfits = result('train', ('train_val_gap', 'WARN', '', {'gap': 0.2}))
  assert advice.next_steps([overfits])[0].startswith('regularise: training accuracy exceeds '
                                                     'validation by 0.200')


def test_one_line_per_warn_and_fail_none_for_a_pass_and_none_for_the_recipes_own():
  found = [result('sanity', ('a', 'PASS', '', {}), ('b', 'WARN', '', {}), ('c', 'FAIL', '', {})),
           result('recipe', ('stage_sanity', 'FAIL', '', {}))]
  assert [(s, c) for s, c, *_ in advice.lines(found)] == [('sanity', 'b'), ('sanity', 'c')]


def test_warns_to_act_on_are_a_next_step_and_warns_to_ignore_are_not():
  found = [result('evaluate', ('calibration', 'WARN', '', {}), ('class_recall', 'WARN', '', {})),
           result('sanity', ('activations_seen', 'WARN', '', {}))]
  steps = advice.next_steps(found)
  assert steps[0] == ('look at the WARNs marked act in report.html: evaluate/calibration, '
                      'evaluate/class_recall')
  assert not any(s.startswith('nothing is in the way') for s in steps)
  ignorable = advice.next_steps([result('sanity', ('activations_seen', 'WARN', '', {}))])
  assert ignorable == advice.next_steps([]) and ignorable[0].startswith('nothing is in the way')


def test_clean_results_ask_only_to_scale_up():
  clean = [result('sanity', ('a', 'PASS', '', {})), result('overfit', ('fits_training_set',
                                                                      'PASS', '', {}))]
  assert advice.lines(clean) == []
  assert advice.next_steps(clean) == [advice.next_steps([])[0]]
  assert advice.next_steps(clean)[0].startswith('nothing is in the way')
