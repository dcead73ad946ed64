"""Step-time overhead of the training monitor (`monitor_layers`, diagnose/monitor.py).

  python scripts/bench_monitor.py [--configs=configs/mnist1d/mlp.py,configs/mnist1d/cnn.py]
      [--steps=2000] [--every=500] [--repeats=5]

The same compiled train step runs `--steps` steps through the engine's loop twice per repeat,
with and without the monitor hook measuring every `--every` steps (the configs' eval
interval), writing to a real TensorBoard file. Both programs are compiled before timing, and
the monitor's once-per-run setup (a trace of the model to find its layers) is timed apart.
Prints per config the median overhead ratio (monitored / plain - 1) and its range.
"""
import argparse
import importlib.util
import tempfile
import time

import jax
import numpy as np

from recipe_jax.diagnose import monitor
from recipe_jax.engine import batches, experiment, loop, tensorboard_writer
from recipe_jax.engine.mesh import put_replicated


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def timed(exp, step, feed, steps, watch=None):
  """Seconds for `steps` steps (and the monitor's setup before them, in seconds, or 0)."""
  state = put_replicated(exp.mesh, exp.initial_state(0))
  jax.block_until_ready(state)
  setup = time.perf_counter()
  if watch:
    watch.prepare(state)
  start = time.perf_counter()
  state, _ = loop.run(step, state, feed, first=0, last=steps,
                      hooks=[loop.Hook(watch)] if watch else [])
  jax.block_until_ready(state)
  return time.perf_counter() - start, start - setup


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', default='configs/mnist1d/mlp.py,configs/mnist1d/cnn.py')
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--every', type=int, default=500)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'device: {device.device_kind} ({device.platform}) x {jax.device_count()}')
  print('| config | steps | measured every | plain s | monitored s | overhead, median | range '
        '| setup per run, ms |')
  print('|---|---|---|---|---|---|---|---|')
  for path in args.configs.split(','):
    exp = experiment.build(load_config(path))
    order = batches.BatchOrder(0, len(exp.dataset.y_train), exp.config.batch_size)
    step = exp.train_step(order.steps_per_epoch)
    feed = batches.device_feed(exp.mesh, exp.dataset.x_train, exp.dataset.y_train, order)

    def monitored():
      writer = tensorboard_writer.ScalarWriter(tempfile.mkdtemp())
      return monitor.LayerMonitor(exp, writer, args.every, 1e3)
    timed(exp, step, feed, args.every + 1, monitored())  # compiles the step and the probes
    plain, watched, setups = [], [], []
    for _ in range(args.repeats):  # interleaved: drifts in machine speed hit both alike
      plain.append(timed(exp, step, feed, args.steps)[0])
      seconds, setup = timed(exp, step, feed, args.steps, monitored())
      watched.append(seconds)
      setups.append(setup)
    ratios = np.array(watched) / np.array(plain) - 1
    print(f'| {path} | {args.steps} | {args.every} | {np.median(plain):.2f} | '
          f'{np.median(watched):.2f} | {np.median(ratios):+.1%} | {ratios.min():+.1%} to '
          f'{ratios.max():+.1%} | {np.median(setups) * 1e3:.0f} |', flush=True)


if __name__ == '__main__':
  main()
