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

from recipe_jax.engine import batches, experiment
from recipe_jax.engine import steps as steps_lib
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
  x, y = exp.dataset.x_train, exp.dataset.y_train
  orders = [batches.BatchOrder(s, len(y), config.batch_size) for s in range(num_seeds)]
  together = steps_lib.compile_train_step(
      exp.step_settings(orders[0].steps_per_epoch, ema_decay=0.0), exp.mesh, side_by_side=True)
  states = put_replicated(exp.mesh, jax.tree.map(
      lambda *leaves: np.stack(leaves), *[exp.initial_state(s) for s in range(num_seeds)]))
  t_together = seconds_per_step(together, states,
                                batches.device_feed(exp.mesh, x, y, orders)(0), steps)
  alone = exp.train_step(orders[0].steps_per_epoch)
  state = put_replicated(exp.mesh, exp.initial_state(0))
  t_alone = seconds_per_step(alone, state, batches.device_feed(exp.mesh, x, y, orders[0])(0),
                             steps)
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
