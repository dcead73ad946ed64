"""Detection and diagnosis rates of the sanity stage on planted defects, and its false alarms
on clean models, over several seeds (the yardstick DEFault reports: 94.3% detection, 63.5%
diagnosis).

  python scripts/diagnosis_rates.py --seeds=5 [--out=diagnosis_rates.json]

Each planted class (tests/test_diagnosis.py's PLANTED) runs sanity on the tests' tiny synthetic
sequences once per seed. Detected: the run FAILs or WARNs a check. Diagnosed: the `diagnosis`
verdict names the planted cause. False alarm: a clean built-in model (tiny widths, the
conformance matrix's; resnet50 left out for time) gets a FAIL, or a diagnosis other than
PASS. Prints a markdown table.
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))

from test_conformance import TINY, synthetic_npz  # noqa: E402
from test_diagnosis import PLANTED, config  # noqa: E402

from recipe_jax.engine import compiled  # noqa: E402
from recipe_jax.stages import sanity  # noqa: E402

CLEAN = {'planted MLP without its bug': ('helpers.planted_bugs:Correct', 'sequence'),
         'linear': ('linear', 'sequence'), 'mlp': ('mlp', 'sequence'),
         'cnn1d': ('cnn1d', 'sequence'), 'gru': ('gru', 'sequence'),
         'cnn2d': ('cnn2d', 'image'), 'vit': ('vit', 'image'), 'resnet18': ('resnet18', 'image'),
         'NNX CNN (user)': ('helpers.nnx_models:CNN', 'sequence'),
         'Linen CNN, BatchNorm, Dropout (user)': ('helpers.nnx_models:LinenCNN', 'sequence')}


def run(npz, workdir, seed, overrides):
  c = config(npz, **overrides)
  c.seed = seed
  verdicts = {v.check: v for v in sanity.run(c, workdir).verdicts}
  compiled.forget()
  return verdicts


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--out', default='')
  parser.add_argument('--only', default='', help='row names to run, separated by | (all: empty)')
  parser.add_argument('--part', default='all', choices=('all', 'planted', 'clean'))
  args = parser.parse_args()
  base = tempfile.mkdtemp()
  npz = {kind: os.path.join(base, f'{kind}.npz') for kind in ('sequence', 'image')}
  for kind, path in npz.items():
    synthetic_npz(path, kind)
  rows, start, alarms_by_check, clean_runs, warns_by_check = {}, time.time(), {}, 0, {}
  wanted = lambda name: not args.only or name in args.only.split('|')
  for name, (overrides, words) in filter(lambda item: wanted(item[0]),
                                        PLANTED.items() if args.part != 'clean' else []):
    detected = diagnosed = 0
    for seed in range(args.seeds):
      v = run(npz['sequence'], os.path.join(base, f'{len(rows)}_{seed}'), seed, overrides)
      detected += any(x.status != 'PASS' for c, x in v.items() if c != 'human_baseline')
      diagnosed += all(w in v['diagnosis'].summary for w in words)
      if not all(w in v['diagnosis'].summary for w in words):
        print(f'  {name} seed {seed}: {v["diagnosis"].summary[:200]}', flush=True)
    rows[name] = {'kind': 'planted', 'detected': detected, 'diagnosed': diagnosed}
    print(f'{name}: detected {detected}/{args.seeds}, diagnosed {diagnosed}/{args.seeds} '
          f'({time.time() - start:.0f} s)', flush=True)
  for name, (model, kind) in filter(lambda item: wanted(item[0]),
                                    CLEAN.items() if args.part != 'planted' else []):
    alarms = 0
    for seed in range(args.seeds):
      overrides = {'model.name': model, **{f'model.{k}': x for k, x in TINY.get(model, {}).items()}}
      v = run(npz[kind], os.path.join(base, f'{len(rows)}_{seed}'), seed, overrides)
      wrong = [f'{c} {x.status}: {x.summary[:120]}' for c, x in v.items()
               if x.status == 'FAIL' or (c == 'diagnosis' and x.status != 'PASS')]
      alarms += bool(wrong)
      clean_runs += 1
      for c, x in v.items():
        if x.status == 'FAIL' or (c == 'diagnosis' and x.status != 'PASS'):
          alarms_by_check[c] = alarms_by_check.get(c, 0) + 1
        elif x.status == 'WARN' and c != 'human_baseline':
          warns_by_check[c] = warns_by_check.get(c, 0) + 1
      for w in wrong:
        print(f'  {name} seed {seed}: {w}', flush=True)
    rows[name] = {'kind': 'clean', 'false_alarms': alarms}
    print(f'{name}: false alarms {alarms}/{args.seeds} ({time.time() - start:.0f} s)', flush=True)
  planted = [r for r in rows.values() if r['kind'] == 'planted']
  total = max(1, len(planted)) * args.seeds
  if planted:
    print(f'\n| planted defect | detected | cause named |\n|---|---|---|')
    for name, r in rows.items():
      if r['kind'] == 'planted':
        print(f"| {name} | {r['detected']}/{args.seeds} | {r['diagnosed']}/{args.seeds} |")
    print(f"| **all** | {sum(r['detected'] for r in planted) / total:.0%} | "
          f"{sum(r['diagnosed'] for r in planted) / total:.0%} |")
  print('\n| clean model | false alarms |\n|---|---|')
  for name, r in rows.items():
    if r['kind'] == 'clean':
      print(f"| {name} | {r['false_alarms']}/{args.seeds} |")
  print(f'\nfalse alarms per check over {clean_runs} clean runs: ' + (', '.join(
      f'{c} {n}/{clean_runs}' for c, n in sorted(alarms_by_check.items())) or 'none') +
      '; every other check 0')
  print(f'WARNs on clean runs (not counted as alarms): ' + (', '.join(
      f'{c} {n}/{clean_runs}' for c, n in sorted(warns_by_check.items())) or 'none'))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'seeds': args.seeds, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
