"""Runs the reference configs for several seeds and prints test accuracy as a markdown table.

  python scripts/reference_results.py --workdir=/tmp/reference [--seeds=0,1] [--configs=...]
Finished runs are not redone (each run resumes from its own workdir).
"""
import argparse
import json
import os
import subprocess
import sys

REFERENCE = {  # config: (the paper's test accuracy or None, the target this project must reach)
    'configs/mnist1d/linear.py': (0.32, 0.31),
    'configs/mnist1d/mlp.py': (0.68, 0.64),
    'configs/mnist1d/cnn.py': (0.94, 0.92),
    'configs/mnist1d/gru.py': (0.91, 0.88),
    'configs/mnist1d/cnn_regularized.py': (0.94, 0.94),  # issue 5: the paper's CNN number
    'configs/digits/mlp.py': (None, 0.97),
    'configs/digits/cnn.py': (None, 0.97),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--configs', default=','.join(REFERENCE))
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  print('| config | paper | target | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean | train s |')
  print('|---' * (len(seeds) + 5) + '|')
  for config in args.configs.split(','):
    accuracies, seconds = [], 0.0
    for seed in seeds:
      name = os.path.splitext(config.replace('configs/', ''))[0].replace('/', '_')
      workdir = os.path.join(args.workdir, f'{name}_seed{seed}')
      subprocess.run([sys.executable, '-m', 'recipe_jax.main', f'--config={config}',
                      f'--workdir={workdir}', f'--config.seed={seed}'], check=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      with open(os.path.join(workdir, 'summary.json')) as f:
        summary = json.load(f)
      accuracies.append(summary['test_accuracy'])
      seconds += summary['wall_s']
    paper, target = REFERENCE.get(config, (None, None))
    cells = ' | '.join(f'{a:.1%}' for a in accuracies)
    mean = sum(accuracies) / len(accuracies)
    percent = lambda x: '-' if x is None else f'{x:.0%}'
    print(f'| {config} | {percent(paper)} | {percent(target)} | {cells} | {mean:.1%} | '
          f'{seconds / len(seeds):.0f} |', flush=True)


if __name__ == '__main__':
  main()
