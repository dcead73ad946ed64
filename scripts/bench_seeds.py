"""Seeds per second: N seeds side by side (one vmapped program) vs one seed after another.

  python scripts/bench_seeds.py [--configs=configs/mnist1d/mlp.py,configs/mnist1d/cnn.py]
      [--seeds=3,8] [--steps=500] [--repeats=3]

Steady state: both programs compiled first, then the steps timed (medians of the repeats).
The sequential figure is one seed's step time times N (the seeds' steps are the same
program). On a GPU the goal is 8 MNIST-1D seeds in less than 2x the time of one.
"""
import argparse
import importlib.util
import time

import jax
import numpy as np

from recipe_jax.data import datasets as data_lib
from recipe_jax.engine import experiment, trainer
from recipe_jax.engine.mesh import put_replicated


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def seconds_per_step(step, state, args, steps):
  state, _ = step(state, *args)  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, *args)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


def measure(config, num_seeds: int, steps: int):
  exp = experiment.build(config)
  num = len(exp.dataset.y_train)
  per_epoch = data_lib.steps_per_epoch(num, config.batch_size)
  x, y = put_replicated(exp.mesh, (exp.dataset.x_train, exp.dataset.y_train))
  seeds = np.arange(num_seeds, dtype=np.int32)
  together = trainer.make_train_step(exp.model, exp.tx, exp.mesh, config.batch_size, per_epoch,
                                     None, exp.train_loss_fn, exp.augmentation,
                                     side_by_side=True)
  states = put_replicated(exp.mesh, jax.tree.map(
      lambda *leaves: np.stack(leaves), *[exp.initial_state(int(s)) for s in seeds]))
  perms = put_replicated(exp.mesh, np.stack([data_lib.epoch_permutation(int(s), 0, num)
                                             for s in seeds]))
  t_together = seconds_per_step(together, states, (x, y, perms, put_replicated(exp.mesh, seeds)),
                                steps)
  alone = exp.train_step(per_epoch)
  state = put_replicated(exp.mesh, exp.initial_state())
  t_alone = seconds_per_step(alone, state, (x, y, perms[0]), steps)
  return t_together, t_alone


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', default='configs/mnist1d/mlp.py,configs/mnist1d/cnn.py')
  parser.add_argument('--seeds', default='3,8')
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'device: {device.device_kind} ({device.platform}) x {jax.device_count()}')
  print('| config | seeds | side by side ms/step | one seed ms/step | seed-steps/s side by side '
        '| seed-steps/s one at a time | speed-up | time of N vs one |')
  print('|---|---|---|---|---|---|---|---|')
  for path in args.configs.split(','):
    config = load_config(path)
    for n in map(int, args.seeds.split(',')):
      runs = [measure(config, n, args.steps) for _ in range(args.repeats)]
      together, alone = (float(np.median(v)) for v in zip(*runs))
      print(f'| {path} | {n} | {together * 1e3:.3f} | {alone * 1e3:.3f} | '
            f'{n / together:,.0f} | {1 / alone:,.0f} | {n * alone / together:.2f}x | '
            f'{together / alone:.2f}x |')


if __name__ == '__main__':
  main()
