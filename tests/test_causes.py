"""Causes are one closed vocabulary: a verdict refuses a code that is not in it, every code a
module names is in it, and every code in it is named by some module."""
import re

import pytest
from test_layout import modules

from recipe_jax.causes import CAUSES
from recipe_jax import words
from recipe_jax.verdicts import Verdict


def test_a_verdict_refuses_a_cause_outside_the_vocabulary():
  with pytest.raises(ValueError, match="cause 'lr_too_hihg' is not in causes.CAUSES"):
    Verdict('gradient_flow', 'FAIL', 'x', {}, cause='lr_too_hihg')
  assert Verdict('gradient_flow', 'FAIL', 'x', {}, cause='lr_too_high').cause == 'lr_too_high'


def test_every_code_the_package_names_is_in_the_vocabulary_and_every_code_is_used():
  sources = {n: t for n, t in modules().items() if n != 'recipe_jax.causes'}
  named = set()
  for text in sources.values():
    named |= set(re.findall(r"cause=['\"](\w+)['\"]", text))
    named |= set(re.findall(r"Finding\(['\"](\w+)['\"]", text))
  assert named and named <= set(CAUSES), named - set(CAUSES)
  text = '\n'.join(sources.values())
  unused = [code for code in CAUSES if not re.search(rf"['\"]{code}['\"]", text)]
  assert unused == []


def test_a_diagnosed_symptom_shows_its_cause_in_words_and_keeps_its_own_sentence():
  symptom = Verdict('decreasing_loss', 'FAIL', 'the loss fell 1%', {'diagnosed': True},
                    cause='lr_too_low')
  assert words.sentence(symptom) == ('the loss fell 1%; most likely cause: learning rate far too '
                                     'small (see diagnosis)')
  as_saved = {'summary': 'the loss fell 1%', 'cause': 'ambiguous',
              'evidence': {'diagnosed': True}}
  assert words.sentence(as_saved) == 'the loss fell 1%; ambiguous (see diagnosis)'
  own = Verdict('loss_signature', 'WARN', 'a floor', {}, cause='loss_floor')
  assert words.sentence(own) == 'a floor'  # a check's own cause is in its own words already
