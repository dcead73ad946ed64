"""The defect generator plants what it says, at the magnitude it says, and the rates script
samples every class and magnitude on tuned and held-out models and scores a wrong cause as
a misdiagnosis."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from helpers import defects, zoo
from recipe_jax.diagnose import probes
from recipe_jax.model import losses, user_code

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'scripts'))
import diagnosis_rates  # noqa: E402  scripts/diagnosis_rates.py


def planted(defect, magnitude, arch='ReluMLP'):
  name = defects.planted_model(defects, f'helpers.zoo:{arch}', defect, magnitude)
  model = user_code.load(name, 'model')(num_classes=4)
  x = jnp.ones((2, 16))
  return model, model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x)


def test_init_defects_change_the_initial_parameters_as_named():
  _, clean = planted('inputs scaled away', 1.0)  # a defect of the computation: same init
  _, scaled = planted('init scaled up (ReLU)', 4.0)
  np.testing.assert_allclose(scaled['params']['inner']['Dense_1']['kernel'],
                             4 * clean['params']['inner']['Dense_1']['kernel'])
  _, biased = planted('negative first bias', 1.5)
  assert np.all(biased['params']['inner']['Dense_0']['bias'] == -1.5)
  assert np.all(biased['params']['inner']['Dense_1']['bias'] == 0)
  _, copied = planted('copied units', 0.6)
  found = probes.symmetric_units(copied['params'], 'inner/Dense_0', 'inner/Dense_1')
  assert found['copied_fraction'] == round(0.6 * 256) / 256  # incoming and outgoing copies


def test_computation_defects():
  model, variables = planted('squashed output', 1.0)
  out = model.apply(variables, jnp.ones((2, 16)))
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)  # probabilities
  model, variables = planted('batch mean subtracted', 1.0)
  a = model.apply(variables, jnp.stack([jnp.ones(16), jnp.zeros(16)]))
  b = model.apply(variables, jnp.stack([jnp.ones(16), 5 * jnp.ones(16)]))
  assert not np.allclose(a[0], b[0])  # example 0's output moved with example 1's input


def test_loss_and_data_defects():
  labels, logits = jnp.arange(8) % 4, jnp.eye(4)[jnp.arange(8) % 4] * 5
  shifted = user_code.load(defects.planted_loss(defects, 'targets shifted in the loss', 1.0),
                           'loss')
  assert float(shifted(logits, labels).mean()) > float(losses.cross_entropy(logits, labels).mean())
  arrays = {'x_train': np.arange(20.0).reshape(10, 2), 'y_train': np.arange(10) % 5,
            'x_test': np.zeros((4, 2)), 'y_test': np.zeros(4, int)}
  shuffled = defects.planted_data(arrays, 'labels shuffled in the data', 1.0, seed=0)
  assert sorted(shuffled['y_train']) == sorted(arrays['y_train'])
  assert np.any(shuffled['y_train'] != arrays['y_train'])
  raw = defects.planted_data(arrays, 'inputs not normalised', 255.0, seed=0)
  assert raw['x_train'].max() == 255.0


def test_the_sample_covers_every_class_and_magnitude_on_tuned_and_held_out_models():
  sample = diagnosis_rates.plan('classification', tuned=2, held_out=1)
  for name, defect in defects.CLASSIFICATION.items():
    for magnitude in defect.magnitudes:
      parts = {part for n, m, _, part, _, _ in sample if n == name and m == magnitude}
      expected = {'tuned'} | ({'held_out'} if defects.ARCHS[defect.archs]['held_out'] else set())
      assert parts == expected, (name, magnitude)
  held_out = {arch for _, _, arch, part, _, _ in sample if part == 'held_out'}
  assert held_out <= set(zoo.HELD_OUT)
  clean = [arch for n, _, arch, _, _, _ in sample if n is None]
  assert set(clean) == {arch for _, _, arch, _, _, _ in sample}  # each model clean too


def test_a_wrong_cause_named_by_the_diagnosis_is_a_misdiagnosis():
  named = defects.CLASSIFICATION['batch mean subtracted'].named
  right = {'statuses': {'batch_dependency': 'FAIL', 'diagnosis': 'WARN'},
           'summaries': {'batch_dependency': 'the model mixes examples across the batch',
                         'diagnosis': 'no symptom failed, but inside the net: most likely cause: '
                                      'examples mixed across the batch. Evidence: ...'}}
  assert diagnosis_rates.scored(right, named) == (True, True)
  wrong = {'statuses': right['statuses'], 'summaries': {
      **right['summaries'], 'diagnosis': 'most likely cause: learning rate too large. Evidence:'}}
  assert diagnosis_rates.scored(wrong, named) == (True, False)
  quiet = {'statuses': {'batch_dependency': 'PASS', 'diagnosis': 'PASS'}, 'summaries': {}}
  assert diagnosis_rates.scored(quiet, named) == (False, False)
  assert diagnosis_rates.alarms({'statuses': {'x': 'WARN', 'diagnosis': 'PASS'}}) == (False, True)
  # today's records carry the diagnosis' cause code: it decides, whatever the sentence says
  coded = {**wrong, 'causes': {'diagnosis': 'examples_mixed'}}
  assert diagnosis_rates.scored(coded, named) == (True, True)
  coded = {**right, 'causes': {'diagnosis': 'lr_too_high'}}
  assert diagnosis_rates.scored(coded, named) == (True, False)


def test_a_warn_the_clean_model_raises_too_is_not_a_detection():
  run = {'statuses': {'loss_at_init': 'WARN', 'diagnosis': 'PASS'}, 'summaries': {}}
  named = defects.CLASSIFICATION['learning rate too large'].named
  assert diagnosis_rates.scored(run, named, quiet_when_clean=set())[0] is False
  assert diagnosis_rates.scored(run, named, quiet_when_clean={'loss_at_init'})[0] is True
  failed = {'statuses': {'loss_at_init': 'FAIL'}, 'summaries': {}}
  assert diagnosis_rates.scored(failed, named, quiet_when_clean=set())[0] is True
