"""Did a refactor keep the verdicts? Compares two records of the test suite's verdicts (made with
RECIPE_JAX_RECORD_VERDICTS=PATH python -m pytest, tests/conftest.py): for every test and check,
the statuses and the causes it gave before and after, causes of older code translated to
today's codes (CAUSE_CODES). Prints what differs; with --write, keeps both records reduced to
tests/data/verdicts_{before,after}.json, which tests/test_behaviour_preserved.py compares.

  python scripts/verdicts_preserved.py BEFORE.jsonl AFTER.jsonl [--write]
"""
import argparse
import collections
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEPT = os.path.join(REPO, 'tests', 'data')

# (check prefix, cause in evidence before recipe_jax/causes.py) -> today's code
CAUSE_CODES = {
    ('loss_signature', 'not_finite'): 'loss_not_finite',
    ('loss_signature', 'unbounded'): 'loss_maximised',
    ('loss_signature', 'batch_dependent'): 'targets_from_other_examples',
    ('loss_signature', 'targets_differ'): 'targets_differ',
    ('loss_signature', 'floor'): 'loss_floor', ('loss_signature', 'scaled'): 'loss_scaled',
    ('loss_signature', 'other'): 'loss_not_cross_entropy',
    ('inputs_before_net', 'non_finite'): 'inputs_non_finite',
    ('inputs_before_net', 'identical'): 'inputs_identical',
    ('inputs_before_net', 'unnormalised'): 'inputs_unnormalised',
    ('gradient_flow', 'vanishing gradients'): 'vanishing_gradients',
    ('gradient_flow', 'exploding gradients'): 'exploding_gradients',
    ('label_noise', 'label encodings differ by rows'): 'labels_by_rows',
    ('label_noise', 'classes alike'): 'classes_alike',
    ('label_noise', 'systematic confusion'): 'systematic_confusion',
    ('label_noise', 'hard task'): 'hard_task',
    ('label_noise', 'random label noise'): 'random_label_noise',
    ('input_blocks_', 'labels'): 'labels_block', ('input_blocks_', 'block'): 'input_block',
    ('input_blocks_', 'trend'): 'input_trend',
    ('train_val_gap', 'labels'): 'gap_from_labels',
    ('train_val_gap', 'labels_and_overfitting'): 'gap_from_labels_and_overfitting',
    ('seed_position', 'not_a_number'): 'metric_not_finite',
    ('seed_position', 'lucky_seed'): 'lucky_seed', ('seed_position', 'unlucky_seed'): 'unlucky_seed',
    ('trends_hold', 'flips'): 'trends_flip', ('trends_hold', 'ranking'): 'trends_ranking',
    ('trends_hold', 'nothing_to_check'): 'nothing_to_check',
    ('trends_hold', 'all_fade'): 'trends_all_faded', ('trends_hold', 'diverged'): 'run_diverged',
}


def code_of(check: str, cause, summary: str):
  """Today's code for a recorded cause. The diagnosis' cause is compared by its words (before
  the codes its sentence named it; two codes share the words 'targets not a function of the
  inputs')."""
  if check == 'diagnosis':
    from recipe_jax.causes import CAUSES
    if cause is not None:
      return CAUSES[cause]
    said = re.search(r'most likely cause: ([^.]+)\.', summary or '')
    if said:
      return said.group(1)
    return 'ambiguous' if 'ambiguous' in (summary or '')[:60] else None
  for (prefix, old), new in CAUSE_CODES.items():
    if check.startswith(prefix) and cause == old:
      return new
  return cause


def reduced(path: str) -> dict:
  """{test: {check: [sorted statuses, sorted causes]}} of a .jsonl record."""
  found = collections.defaultdict(lambda: collections.defaultdict(lambda: (set(), set())))
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      statuses, causes = found[r['test']][r['check']]
      statuses.add(r['status'])
      code = code_of(r['check'], r.get('cause'), r.get('summary'))
      if code is not None:
        causes.add(code)
  return {t: {c: [sorted(s), sorted(k)] for c, (s, k) in checks.items()}
          for t, checks in found.items()}


def differences(before: dict, after: dict) -> list:
  """[(test, check, before, after)] for the tests both records ran, where a check of before
  gives other statuses after, or a cause before is not among the causes after (a check that
  names a cause only now, or a check new since, is no difference)."""
  out = []
  for test in sorted(set(before) & set(after)):
    for check in sorted(before[test]):
      b, a = before[test].get(check, [[], []]), after[test].get(check, [[], []])
      if b[0] != a[0] or not set(b[1]) <= set(a[1]):
        out.append((test, check, b, a))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('before')
  parser.add_argument('after')
  parser.add_argument('--write', action='store_true')
  args = parser.parse_args(argv)
  before, after = reduced(args.before), reduced(args.after)
  found = differences(before, after)
  print(f'{len(set(before) & set(after))} tests in both records, '
        f'{sum(len(c) for t, c in before.items() if t in after)} (test, check) pairs; '
        f'{len(found)} differ')
  for test, check, b, a in found:
    print(f'  {test} {check}: {b} -> {a}')
  if args.write:
    os.makedirs(KEPT, exist_ok=True)
    for name, record in (('before', before), ('after', after)):
      with open(os.path.join(KEPT, f'verdicts_{name}.json'), 'w') as f:
        json.dump(record, f, indent=0, sort_keys=True)
  return found


if __name__ == '__main__':
  sys.exit(1 if main() else 0)
