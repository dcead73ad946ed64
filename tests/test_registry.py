"""The one registry of checks: the sanity stage runs what it lists, in its order; advice
follows its entries; the docs' table of checks is made from it; its causes are the vocabulary's."""
import os

from recipe_jax.causes import CAUSES
from recipe_jax.diagnose import registry
from recipe_jax.report import advice
from recipe_jax.stages import sanity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_docs_tables_of_checks_are_made_from_the_registry():
  for module, page in registry.FAMILIES.items():
    with open(os.path.join(REPO, page)) as f:
      assert registry.documented(f.read(), module) == registry.docs_table(module), (
          f'{page} differs from the registry: python -m recipe_jax.diagnose.registry')


def test_every_registered_cause_is_in_the_vocabulary_and_names_are_unique():
  checks = registry.every()
  assert all(set(c.causes) <= set(CAUSES) for c in checks)
  assert len({(stage, c.name) for c in checks for stage in c.stages}) == sum(
      len(c.stages) for c in checks)


def test_the_sanity_stage_runs_the_registered_checks_in_their_order():
  assert sanity.CHECKS == tuple(n for n in registry.names('sanity') if n != 'diagnosis')
  assert registry.names('sanity')[-1] == 'diagnosis'  # it reads every other check


def test_advice_reads_a_registered_checks_own_rule():
  floor = {'check': 'loss_signature', 'status': 'WARN', 'summary': '', 'cause': 'loss_floor',
           'evidence': {'floor': 0.5}}
  assert advice.act_or_ignore('sanity', floor)[0] is False
  assert registry.find('sanity', 'loss_signature').advice is not None
  assert registry.find('inspect', 'loss_signature') is None  # another stage's check
