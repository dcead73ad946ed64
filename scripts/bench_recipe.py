"""README's quickstart recipe (configs/mnist1d/recipe.py) at a base commit against HEAD, on this
machine: per-stage wall time and the whole, and the ensemble's test accuracy.

  python scripts/bench_recipe.py --base=17dd827 --pairs=3 [--workdir=/tmp/bench_recipe]

Each side first runs once cold (a fresh HOME: no compilation cache, the dataset generated), then
the two sides alternate `--pairs` times in fresh workdirs with their warm caches; pair i runs
seed i (0, 1, 2, ...) on both sides, so the ensembles' test accuracy over the pairs is the
figure docs/recipe.md (and README) quotes over seeds. The base runs from `git archive BASE` (its own package first on
sys.path), in the same virtual environment. Stage times come from each workdir's log.txt
('recipe: <stage> done in M:SS', whole seconds). The last line: `ratio HEAD / base: X`, the median over pairs.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/mnist1d/recipe.py'
DONE = re.compile(r'recipe: (\w+) done in (?:(\d+):)?(\d+):(\d+)')


def source(commit: str, workdir: str) -> str:
  """The commit's files (HEAD: this checkout)."""
  if commit == 'HEAD':
    return REPO
  folder = os.path.join(workdir, f'src_{commit}')
  if not os.path.isdir(folder):
    os.makedirs(folder)
    archive = subprocess.run(['git', 'archive', commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', folder], input=archive, check=True)
  return folder


def recipe(src: str, workdir: str, home: str, seed: int) -> dict:
  """One recipe run: {'whole': s, 'stages': {stage: s}, 'ensemble_test_accuracy': a}."""
  shutil.rmtree(workdir, ignore_errors=True)
  env = dict(os.environ, HOME=home, PYTHONPATH=src)
  start = time.time()
  done = subprocess.run([sys.executable, '-m', 'recipe_jax.main', f'--config={CONFIG}',
                         f'--workdir={workdir}', f'--config.seed={seed}'], cwd=src, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  whole = time.time() - start
  if done.returncode not in (0, 1):  # 1: a check FAILed, the recipe still ran
    raise SystemExit(f'{src}: the recipe exited {done.returncode}:\n{done.stderr[-3000:]}')
  stages = {}
  with open(os.path.join(workdir, 'log.txt')) as f:
    for match in DONE.finditer(f.read()):
      hours, minutes, seconds = (int(g or 0) for g in match.groups()[1:])
      stages[match.group(1)] = 3600 * hours + 60 * minutes + seconds
  squeeze = os.path.join(workdir, 'squeeze', 'result.json')
  if not os.path.exists(squeeze):  # a FAIL in inspect or sanity stopped the recipe
    raise SystemExit(f'{src}: the recipe stopped before squeeze:\n{done.stderr[-3000:]}')
  with open(squeeze) as f:
    accuracy = json.load(f)['metrics'].get('ensemble_test_accuracy', float('nan'))
  return {'whole': whole, 'stages': stages, 'ensemble_test_accuracy': accuracy}


def spread(values) -> str:
  values = np.asarray(values, float)
  return f'{np.median(values):7.1f} [{values.min():.1f}, {values.max():.1f}]'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--base', required=True)
  parser.add_argument('--pairs', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/bench_recipe')
  parser.add_argument('--no-cold', action='store_true', help='skip the cold runs (caches warm)')
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  sides = {'base': source(args.base, args.workdir), 'HEAD': REPO}
  homes = {side: os.path.join(args.workdir, f'home_{side}') for side in sides}
  runs = {side: [] for side in sides}
  for side, src in sides.items():
    if not args.no_cold:
      shutil.rmtree(homes[side], ignore_errors=True)
      cold = recipe(src, os.path.join(args.workdir, f'{side}_cold'), homes[side], 0)
      print(f'{side} cold: {cold["whole"]:.1f} s', flush=True)
  for pair in range(args.pairs):
    for side in (('base', 'HEAD') if pair % 2 == 0 else ('HEAD', 'base')):
      found = recipe(sides[side], os.path.join(args.workdir, f'{side}_{pair}'), homes[side],
                     pair)
      runs[side].append(found)
      print(f'pair {pair} {side}: {found["whole"]:.1f} s, ensemble test accuracy '
            f'{found["ensemble_test_accuracy"]:.4f}, {json.dumps(found["stages"])}', flush=True)
  stages = list(dict.fromkeys(s for side in runs.values() for r in side for s in r['stages']))
  print(f'\n{"stage":<13} {"base s":>24} {"HEAD s":>24} {"HEAD / base":>12}')
  for stage in [*stages, 'whole']:
    pick = (lambda r: r['whole']) if stage == 'whole' else (lambda r: r['stages'].get(stage, 0))
    base, head = [pick(r) for r in runs['base']], [pick(r) for r in runs['HEAD']]
    ratio = np.median(head) / np.median(base) if np.median(base) else float('nan')
    print(f'{stage:<13} {spread(base):>24} {spread(head):>24} {ratio:>12.2f}')
  for side in sides:
    accuracies = [r['ensemble_test_accuracy'] for r in runs[side]]
    print(f'{side} ensemble test accuracy over seeds 0-{args.pairs - 1}: '
          f'{np.mean(accuracies):.4f} +- {np.std(accuracies, ddof=1) if len(accuracies) > 1 else 0:.4f}'
          f' ({", ".join(f"{a:.4f}" for a in accuracies)})')
  ratios = [h['whole'] / b['whole'] for b, h in zip(runs['base'], runs['HEAD'])]
  print(f'ratio HEAD / base: {np.median(ratios):.3f}')


if __name__ == '__main__':
  main()
