"""Runs the reference configs for several seeds, records the results in
scripts/reference_results.json, and rewrites the reference table in docs/reference_results.md
from that file.

  python scripts/reference_results.py --workdir=/tmp/reference [--seeds=0,1,2,3,4] [--configs=...]
  python scripts/reference_results.py --table-only   # the docs page's table from the recorded file

Finished runs are not redone (each run resumes from its own workdir). The file records the
package versions and the CPU: single-seed bits (and so single-seed accuracies) are the same on
the same machine and versions, and differ between CPU models (XLA:CPU picks other kernels).
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'scripts', 'reference_results.json')
TABLE_PAGE = os.path.join(REPO, 'docs', 'reference_results.md')
TABLE_START, TABLE_END = '<!-- reference table: scripts/reference_results.py -->', '<!-- end -->'
REFERENCE = {  # config: (the paper's test accuracy or None, the target this project must reach)
    'configs/mnist1d/linear.py': (0.32, 0.31),
    'configs/mnist1d/mlp.py': (0.68, 0.64),
    'configs/mnist1d/cnn.py': (0.94, 0.92),
    'configs/mnist1d/gru.py': (0.91, 0.88),
    'configs/mnist1d/cnn_regularized.py': (0.94, 0.94),  # issue 5: the paper's CNN number
    'configs/digits/mlp.py': (None, 0.97),
    'configs/digits/cnn.py': (None, 0.97),
    'configs/mnist1d/vit.py': (None, None),  # issue 30: a real model next to the CNN
    'configs/digits/vit.py': (None, None),
}
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'tensorflow-datasets', 'mnist1d')


def environment() -> dict:
  """What the recorded bits depend on besides the code: package versions and the machine."""
  return {'packages': {p: importlib.metadata.version(p) for p in PACKAGES},
          'machine': platform.machine(), 'cpu': cpu_model(), 'python': platform.python_version()}


def cpu_model() -> str:
  """lscpu's model name (XLA:CPU's floating point can differ between CPU models)."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
  except OSError:
    return platform.processor() or 'unknown'
  return next((line.split(':', 1)[1].strip() for line in out.splitlines()
               if line.startswith('Model name')), 'unknown')


def run_seed(config: str, seed: int, workdir: str) -> dict:
  name = os.path.splitext(config.replace('configs/', ''))[0].replace('/', '_')
  run_dir = os.path.join(workdir, f'{name}_seed{seed}')
  subprocess.run([sys.executable, '-m', 'recipe_jax.main', f'--config={config}',
                  f'--workdir={run_dir}', f'--config.seed={seed}'], check=True, cwd=REPO,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  with open(os.path.join(run_dir, 'summary.json')) as f:
    summary = json.load(f)
  return {k: summary[k] for k in ('test_accuracy', 'params_sha256', 'wall_s')}


def table(results: dict) -> str:
  """Test accuracy as mean +- std over the seeds (and their range): single seeds' bits, and so
  their accuracies, differ between CPU models; the spread is what another machine reproduces."""
  percent = lambda x: '-' if x is None else f'{x:.0%}'
  lines = ['| config | paper | target | test accuracy, mean +- std | range | seeds | train s |',
           '|---|---|---|---|---|---|---|']
  for config, runs in results['configs'].items():
    accuracies = np.array([r['test_accuracy'] for r in runs['seeds'].values()])
    seconds = np.mean([r['wall_s'] for r in runs['seeds'].values()])
    spread = accuracies.std(ddof=1) if len(accuracies) > 1 else 0.0
    lines.append(f"| {config} | {percent(runs['paper'])} | {percent(runs['target'])} | "
                 f'{accuracies.mean():.1%} +- {spread:.1%} | {accuracies.min():.1%} - '
                 f'{accuracies.max():.1%} | {len(accuracies)} | {seconds:.0f} |')
  return '\n'.join(lines)


def update_table(results: dict) -> None:
  with open(TABLE_PAGE) as f:
    text = f.read()
  start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
  with open(TABLE_PAGE, 'w') as f:
    f.write(text[:start] + '\n' + table(results) + '\n' + text[end:])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--configs', default=','.join(REFERENCE))
  parser.add_argument('--table-only', '--readme-only', dest='table_only', action='store_true')
  args = parser.parse_args()
  if args.table_only:
    with open(RESULTS) as f:
      update_table(json.load(f))
    return
  if not args.workdir:
    parser.error('--workdir is required unless --table-only')
  # Bits differ between CPU models: the configs run here replace their recorded runs, the
  # others are kept, and a config run on another machine than the file's records its own.
  results = {'configs': {}, 'environment': environment()}
  if os.path.exists(RESULTS):
    with open(RESULTS) as f:
      recorded = json.load(f)
    results['configs'] = {c: recorded['configs'][c] for c in REFERENCE
                          if c in recorded['configs']}
    results['environment'] = recorded.get('environment', results['environment'])
  for config in args.configs.split(','):
    paper, target = REFERENCE.get(config, (None, None))
    runs = results['configs'][config] = {'paper': paper, 'target': target, 'seeds': {}}
    if environment() != results['environment']:
      runs['environment'] = environment()
    for seed in (int(s) for s in args.seeds.split(',')):
      runs['seeds'][str(seed)] = run_seed(config, seed, args.workdir)
      print(config, seed, runs['seeds'][str(seed)], flush=True)
  results.pop('drift_case', None)
  with open(RESULTS, 'w') as f:
    json.dump(results, f, indent=2)
  update_table(results)
  print(table(results))


if __name__ == '__main__':
  main()
