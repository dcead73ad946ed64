"""Times the near-duplicate (train/test leakage) search at MNIST scale: 60,000 x 784 train
against 10,000 x 784 test, synthetic, with 100 planted perturbed copies that must be found.

  python scripts/bench_leakage.py [--train=60000] [--test=10000] [--dim=784]
"""
import argparse
import time

import jax
import numpy as np

from recipe_jax.diagnose import data_checks


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--train', type=int, default=60000)
  parser.add_argument('--test', type=int, default=10000)
  parser.add_argument('--dim', type=int, default=784)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  train = rng.normal(size=(args.train, args.dim)).astype(np.float32)
  test = rng.normal(size=(args.test, args.dim)).astype(np.float32)
  planted = rng.choice(args.test, 100, replace=False)
  test[planted] = train[:100] + 0.01 * rng.normal(size=(100, args.dim)).astype(np.float32)
  splits = {'train': (train, np.zeros(args.train, int)), 'test': (test, np.zeros(args.test, int))}
  data_checks.near_duplicate_leakage(
      {'train': (train[:4096], splits['train'][1][:4096]), 'test': (test[:2048], np.zeros(2048, int))},
      0.1)  # compile for the block shapes
  start = time.perf_counter()
  [verdict] = data_checks.near_duplicate_leakage(splits, rms_threshold=0.1)
  seconds = time.perf_counter() - start
  found = set(verdict.evidence['leaked_test_indices'])
  print(f'{args.train} x {args.dim} train vs {args.test} test on {jax.devices()[0].platform}: '
        f'{seconds:.1f} s ({2 * args.train * args.test * args.dim / seconds / 1e9:.0f} GFLOP/s '
        f'for the distance matmuls); planted copies found: {len(found & set(planted.tolist()))}/100, '
        f'other flags: {len(found - set(planted.tolist()))}')


if __name__ == '__main__':
  main()
