"""Pretrain, then fine-tune, on digits: is a warm start worth it with few labels?

  python scripts/warm_start_digits.py [--workdir=/tmp/warm_start] [--shots=2,3,10,30,100] [--seeds=0,1]

Pretrains the digits CNN (configs/digits/cnn.py) on digits 0-4, then trains on digits 5-9 with
`shots` labelled examples per class: from scratch, with `init_from` the pretrained run (its
classifier head, 5 classes there and 10 here, starts fresh), and the same with the
convolutions frozen (`init_from_freeze`). Prints a markdown table of test
accuracy on the test split's 5-9 against the number of labelled examples.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipe_jax.config import presets  # noqa: E402
from recipe_jax.data import datasets as data
from recipe_jax.runs import driver  # noqa: E402


def digits_arrays():
  c = presets.digits('cnn2d')
  c.dataset.val_fraction, c.dataset.normalize = 0.0, False
  d = data.load(c.dataset)
  return d.x_train, d.y_train, d.x_test, d.y_test


def save(path, x_train, y_train, x_test, y_test):
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return f'npz:{path}'


def config(dataset: str, steps: int, seed: int, batch_size: int, init_from=None, freeze=''):
  c = presets.digits('cnn2d')
  c.dataset.name, c.dataset.val_fraction = dataset, 0.2
  c.seed, c.num_train_steps, c.batch_size = seed, steps, batch_size
  c.eval_every_steps = c.checkpoint_every_steps = steps
  c.init_from, c.init_from_freeze = init_from, freeze
  return c


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', default='/tmp/warm_start')
  parser.add_argument('--shots', default='2,3,10,30,100')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--steps', type=int, default=300)
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  x_train, y_train, x_test, y_test = digits_arrays()
  low = y_train < 5
  source = save(os.path.join(args.workdir, 'digits_0_4.npz'), x_train[low], y_train[low],
                x_test[y_test < 5], y_test[y_test < 5])
  pretrained = os.path.join(args.workdir, 'pretrained')
  driver.run_training(config(source, 1500, 0, 64), pretrained)
  rows = []
  for shots in (int(s) for s in args.shots.split(',')):
    picked = np.concatenate([np.flatnonzero(y_train == c)[:shots] for c in range(5, 10)])
    target = save(os.path.join(args.workdir, f'digits_5_9_{shots}.npz'), x_train[picked],
                  y_train[picked], x_test[y_test >= 5], y_test[y_test >= 5])
    train_examples = len(picked) - int(round(0.2 * len(picked)))
    batch = min(32, train_examples)
    result = {}
    for name, init_from, freeze in (('scratch', None, ''), ('warm start', pretrained, ''),
                                    ('frozen convs', pretrained, 'Conv_0,Conv_1')):
      accuracies = []
      for seed in (int(s) for s in args.seeds.split(',')):
        run_dir = os.path.join(args.workdir, f'{shots}_{name.replace(" ", "_")}_{seed}')
        summary = driver.run_training(
            config(target, args.steps, seed, batch, init_from, freeze), run_dir)
        accuracies.append(summary['test_accuracy'])
      result[name] = np.mean(accuracies)
    rows.append((shots, train_examples, *result.values()))
  print('| labelled per class | training examples | from scratch | warm start from 0-4 | '
        'warm start, convolutions frozen |')
  print('|---|---|---|---|---|')
  for shots, n, *accuracies in rows:
    print(f'| {shots} | {n} | ' + ' | '.join(f'{a:.1%}' for a in accuracies) + ' |')


if __name__ == '__main__':
  main()
