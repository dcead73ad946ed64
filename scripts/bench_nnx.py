"""Step time of a user's Flax NNX model (run through flax's bridge, `recipe_jax/model/
nnx_models.py`) against the same model written in Linen, in one process:

  python scripts/bench_nnx.py --steps=1000 --repeats=5

Both are the CNN of tests/helpers/nnx_models.py (conv, BatchNorm, conv, dropout, dense) on
MNIST-1D with batch 100, through the pipeline's own compiled train step.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))
from recipe_jax.config import defaults  # noqa: E402
from recipe_jax.engine import batches, experiment  # noqa: E402
from recipe_jax.engine.mesh import put_replicated  # noqa: E402

MODELS = {'nnx': 'helpers.nnx_models:CNN', 'linen': 'helpers.nnx_models:LinenCNN'}


def seconds_per_step(model_name: str, steps: int) -> float:
  config = defaults.get_config()
  config.dataset.name, config.model.name = 'mnist1d', model_name
  exp = experiment.build(config)
  order = batches.BatchOrder(config.seed, len(exp.dataset.y_train), config.batch_size)
  step = exp.train_step(order.steps_per_epoch)
  feed = batches.device_feed(exp.mesh, exp.dataset.x_train, exp.dataset.y_train, order)
  state = put_replicated(exp.mesh, exp.initial_state())
  state, _ = step(state, *feed(0))  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(1, steps + 1):
    state, _ = step(state, *feed(i))
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  times = {name: [] for name in MODELS}
  for _ in range(args.repeats):  # interleaved, so drifts of the machine hit both alike
    for name, model in MODELS.items():
      times[name].append(seconds_per_step(model, args.steps))
  ratios = np.array(times['nnx']) / np.array(times['linen'])
  for name, found in times.items():
    print(f'{name:5s}: {np.median(found) * 1e3:.3f} ms/step (median of {args.repeats})')
  print(f'ratio nnx / linen: median {np.median(ratios):.3f}  range {ratios.min():.3f}-'
        f'{ratios.max():.3f}')


if __name__ == '__main__':
  main()
