"""Per-trial overhead of a sweep, cold vs warm compilation cache, in one run.

  python scripts/bench_tune.py [--config=configs/mnist1d/cnn.py] [--steps=600] [--repeats=3]

A trial is a process that trains a short run. 'cold' starts with an empty persistent
compilation cache; 'warm' runs the same shapes again, as a retried or resumed trial does.
Reported: the process's wall time, the training loop's (summary.json's wall_s), the overhead
between them (imports, data, compilation, shutdown) and the fraction of the trial spent
training; medians over the repeats, with their spread.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_trial(config: str, steps: int, cache: str, workdir: str) -> dict:
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'recipe_jax.main', f'--config={config}',
                  f'--workdir={workdir}', f'--config.num_train_steps={steps}',
                  f'--config.compilation_cache_dir={cache}'], check=True, cwd=REPO,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, 'summary.json')) as f:
    training = json.load(f)['wall_s']
  return {'wall': wall, 'training': training, 'overhead': wall - training,
          'training_fraction': training / wall}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='configs/mnist1d/cnn.py')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  runs = {'cold': [], 'warm': []}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(args.repeats):
      cache = os.path.join(tmp, f'cache_{repeat}')  # empty for the cold trial, then warm
      for kind in ('cold', 'warm'):
        runs[kind].append(one_trial(args.config, args.steps, cache,
                                    os.path.join(tmp, f'{kind}_{repeat}')))
  print(f'config: {args.config}  steps: {args.steps}  repeats: {args.repeats}')
  for kind, trials in runs.items():
    line = '  '.join(
        f'{key} {statistics.median(t[key] for t in trials):.2f} '
        f'[{min(t[key] for t in trials):.2f}..{max(t[key] for t in trials):.2f}]'
        for key in ('wall', 'training', 'overhead', 'training_fraction'))
    print(f'{kind}: {line}')
  cold, warm = (statistics.median(t['overhead'] for t in runs[k]) for k in ('cold', 'warm'))
  print(f'overhead warm / cold: {warm / cold:.2f}')


if __name__ == '__main__':
  main()
