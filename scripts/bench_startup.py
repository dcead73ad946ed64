"""Whole-process time of one train run, by phase, against its own training loop and against
the PyTorch MNIST-1D reference job, measured in one run of this script.

  python scripts/bench_startup.py [--config=configs/mnist1d/cnn.py] [--repeats=3]
      [--torch_python=PYTHON]   # a python with torch: runs scripts/torch_reference_mnist1d.py

A first (cold) run fills the embedded dataset's arrays cache and the persistent compilation
cache; then the runs alternate with the PyTorch job and medians are reported. The phases come
from timing recipe_jax's own functions in the child process: python start and imports, dataset
load, init and compilation before the loop, the training loop (summary.json's wall_s: first
step's compile, steps, evals, checkpoints), error analysis and reports, and the exit.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import json, os, sys, time
T0 = time.time()
from recipe_jax import main
from recipe_jax.data import datasets as data
from recipe_jax.engine import evaluate as evaluation, state, training
from recipe_jax.stages import evaluate, train  # imported by main's dispatch in a real run
T_IMPORT = time.time()
phases = {'import_s': T_IMPORT - T0, 'started_at': T0}
def timed(module, name, key):
  inner = getattr(module, name)
  def wrapper(*args, **kwargs):
    start = time.time()
    try:
      return inner(*args, **kwargs)
    finally:
      phases[key] = phases.get(key, 0.0) + time.time() - start
  setattr(module, name, wrapper)
timed(data, 'load', 'data_s')
timed(state, 'init_state', 'init_compile_s')
timed(evaluation, 'compile_splits', 'init_compile_s')
timed(training, '_train_loop', 'train_loop_s')
timed(evaluate, 'analyse', 'analysis_s')
real_exit = os._exit
def exit_and_report(code):
  phases['main_done_at'] = time.time()
  with open(os.environ['BENCH_PHASES'], 'w') as f:
    json.dump(phases, f)
  real_exit(code)
os._exit = exit_and_report
sys.argv = ['recipe_jax.main', *sys.argv[1:]]
main.run_and_exit()
'''


def run_ours(config: str, workdir: str) -> dict:
  phases_path = os.path.join(workdir + '.phases.json')
  start = time.time()
  subprocess.run([sys.executable, '-c', CHILD, f'--config={config}', f'--workdir={workdir}'],
                 check=True, cwd=REPO, env={**os.environ, 'BENCH_PHASES': phases_path},
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  end = time.time()
  with open(phases_path) as f:
    phases = json.load(f)
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    batch_size = json.load(f)['batch_size']
  phases['import_s'] += phases.pop('started_at') - start  # the interpreter's own start
  phases['shutdown_s'] = end - phases.pop('main_done_at')
  phases['total_s'] = end - start
  phases['loop_wall_s'] = summary['wall_s']
  phases['steps_only_s'] = summary['step'] * batch_size / summary['examples_per_s']
  phases['other_s'] = phases['total_s'] - sum(
      phases.get(k, 0.0) for k in ('import_s', 'data_s', 'init_compile_s', 'train_loop_s',
                                   'analysis_s', 'shutdown_s'))
  return phases


def run_torch(python: str, arrays: str) -> float:
  start = time.time()
  subprocess.run([python, os.path.join(REPO, 'scripts', 'torch_reference_mnist1d.py'),
                  f'--data={arrays}'], check=True, stdout=subprocess.DEVNULL)
  return time.time() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='configs/mnist1d/cnn.py')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--torch_python', default=None)
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from recipe_jax.config import defaults
  from recipe_jax.data import sources
  arrays = sources.embedded_arrays_path(defaults.get_config().dataset)
  with tempfile.TemporaryDirectory() as tmp:
    cold = run_ours(args.config, os.path.join(tmp, 'cold'))
    ours, torch_s = [], []
    for i in range(args.repeats):
      ours.append(run_ours(args.config, os.path.join(tmp, f'run{i}')))
      if args.torch_python:
        torch_s.append(run_torch(args.torch_python, arrays))
  median = {k: float(np.median([r.get(k, 0.0) for r in ours])) for k in ours[0]}
  totals = [r['total_s'] for r in ours]
  print(f'config: {args.config}  repeats: {args.repeats}  (medians; cold first run '
        f"{cold['total_s']:.1f} s)")
  print(f"whole process: {median['total_s']:.2f} s  (range {min(totals):.2f}-{max(totals):.2f})")
  for key in ('import_s', 'data_s', 'init_compile_s', 'train_loop_s', 'analysis_s', 'other_s',
              'shutdown_s'):
    print(f'  {key[:-2]:<14} {median[key]:6.2f} s')
  print(f"training loop (summary wall_s) {median['loop_wall_s']:.2f} s, of which steps "
        f"{median['steps_only_s']:.2f} s")
  print(f"ratio process / training loop: {median['total_s'] / median['loop_wall_s']:.2f}  "
        '(goal <= 1.5)')
  if torch_s:
    print(f'PyTorch reference job: {np.median(torch_s):.2f} s (range {min(torch_s):.2f}-'
          f'{max(torch_s):.2f})')
    print(f"ratio process / PyTorch: {median['total_s'] / np.median(torch_s):.2f}  "
          '(goal <= 0.5)')


if __name__ == '__main__':
  main()
