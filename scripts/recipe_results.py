"""docs/recipe.md's "What the recipe found on MNIST-1D": the quickstart recipe for several seeds
on this machine, its headline figures as mean +- std over the seeds, and its wall time.

  python scripts/recipe_results.py --workdir=/tmp/recipes [--seeds=0,1,2]

Finished seeds are reused (the recipe resumes). Single-seed figures differ between CPU models
(XLA:CPU's floating point differs), so docs/recipe.md quotes the spread, which another machine
reproduces.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from recipe_jax.verdicts import read_result  # noqa: E402

FIGURES = {  # stage: metrics quoted
    'lr_find': ('suggestion',),
    'overfit': ('train_split_accuracy',),
    'compare': ('baseline_eval_accuracy', 'best_eval_accuracy'),
    'tune': ('best_eval_accuracy', 'best_test_accuracy'),
    'squeeze': ('ensemble_test_accuracy', 'mean_member_test_accuracy', 'swa_test_accuracy'),
}


def run_seed(workdir: str, seed: int) -> float:
  start = time.time()
  subprocess.run([sys.executable, '-m', 'recipe_jax.main', '--config=configs/mnist1d/recipe.py',
                  f'--workdir={workdir}', f'--config.seed={seed}'], cwd=REPO, check=False,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.time() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1,2')
  args = parser.parse_args()
  found = {}
  for seed in (int(s) for s in args.seeds.split(',')):
    workdir = os.path.join(args.workdir, f'seed_{seed}')
    seconds = run_seed(workdir, seed)
    results = {stage: read_result(os.path.join(workdir, stage, 'result.json'))
               for stage in ('inspect', 'sanity', *FIGURES)}
    found[seed] = {'seconds': seconds, 'counts': {s: r.counts() for s, r in results.items()},
                   'best_variant': results['compare'].metrics.get('best_variant'),
                   'compare_handed_on': [v.check for v in results['compare'].verdicts
                                         if v.status == 'PASS'],
                   **{f'{s}.{k}': results[s].metrics.get(k) for s, keys in FIGURES.items()
                      for k in keys}}
    print(seed, json.dumps(found[seed]), flush=True)
  print()
  for key in [k for k in found[min(found)] if '.' in k or k == 'seconds']:
    values = np.array([f[key] for f in found.values() if f[key] is not None], float)
    print(f'{key}: {values.mean():.4g} +- {values.std(ddof=1) if len(values) > 1 else 0:.2g} '
          f'(range {values.min():.4g} - {values.max():.4g})')
  for seed, f in found.items():
    print(seed, {s: f"{c['PASS']}/{c['WARN']}/{c['FAIL']}" for s, c in f['counts'].items()},
          f['compare_handed_on'])


if __name__ == '__main__':
  main()
