"""The refactor of issue 44 (checks as registered units with cause codes, one noise rule, one
multi-run driver) kept the verdicts: the whole suite's verdicts recorded before it and after
(scripts/verdicts_preserved.py) give, test by test and check by check, the same statuses and
the same causes, except where the wrong words it fixed, or the recorder, say why."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'scripts'))
import verdicts_preserved  # noqa: E402  scripts/verdicts_preserved.py
KEPT = os.path.join(REPO, 'tests', 'data')

# (test, check) -> why it may differ
EXPECTED = {}


def kept(name):
  with open(os.path.join(KEPT, f'verdicts_{name}.json')) as f:
    return json.load(f)


def test_the_same_tests_give_the_same_statuses_and_causes_as_before_the_refactor():
  before, after = kept('before'), kept('after')
  assert len(set(before) & set(after)) > 0.9 * len(before)  # the same suite, not a slice
  found = [(t, c, b, a) for t, c, b, a in verdicts_preserved.differences(before, after)
           if (t, c) not in EXPECTED]
  assert found == []


@pytest.mark.parametrize('record, differs', [
    ({'t': {'x': [['PASS'], []]}}, False),
    ({'t': {'x': [['WARN'], []]}}, True),  # another status
    ({'t': {'x': [['PASS'], ['lr_too_high']]}}, False),  # a cause named only now
    ({'t': {'x': [['PASS'], []], 'new': [['WARN'], []]}}, False),  # a check added since
    ({'t': {}}, True),  # a check gone
])
def test_the_comparison_sees_a_changed_status_and_a_lost_cause(record, differs):
  before = {'t': {'x': [['PASS'], []]}}
  assert bool(verdicts_preserved.differences(before, record)) is differs
  lost = {'t': {'x': [['PASS'], ['loss_floor']]}}
  assert verdicts_preserved.differences(lost, before)  # a cause before, none after
