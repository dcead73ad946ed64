"""How long the worklog takes over many runs: python scripts/bench_worklog.py --runs=1000

Trains one short MNIST-1D MLP run, copies what a finished run's worklog row reads (config,
summary, provenance, result, a checkpoint's worth of small files) into N run folders with one
key changed each, then times `runs.worklog.rows` and the Markdown table (median of 3).
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time

from recipe_jax import files
from recipe_jax.config import presets
from recipe_jax.runs import worklog
from recipe_jax.stages import train


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--runs', type=int, default=1000)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix='worklog_bench_')
  config = presets.mnist1d('mlp')
  config.num_train_steps, config.eval_every_steps = 40, 40
  first = os.path.join(root, 'run_00000')
  train.run(config, first)
  for i in range(1, args.runs):
    copy = os.path.join(root, f'run_{i:05d}')
    shutil.copytree(first, copy)
    saved = files.read_json(os.path.join(copy, 'config.json'))
    saved['seed'] = i  # each run differs from the one before
    files.write_json(os.path.join(copy, 'config.json'), saved)
  listed = sum(len(names) for _, _, names in os.walk(root))
  times = []
  for _ in range(3):
    start = time.time()
    table = worklog.markdown(worklog.rows(root))
    times.append(time.time() - start)
  print(f'{args.runs} runs, {listed} files: worklog in {statistics.median(times):.2f} s '
        f'(median of 3, range {min(times):.2f}-{max(times):.2f}); {len(table)} characters')
  shutil.rmtree(root)


if __name__ == '__main__':
  main()
