"""Input pipeline: examples/s of the grain path (streamed from storage) vs the device path (the
training split in device memory), and the fraction of the loop's time spent waiting for data.

  python scripts/bench_input.py [--workdir=/tmp/bench_input] [--size_gb=2] [--steps=1000]
      [--repeats=5] [--resnet_steps=10] [--device_memory_fraction=0.01]

Two jobs, each trained with both pipelines (steady state: `examples_per_s` and
`data_wait_fraction` of the run summary, both measured after the first, compiling step):
  - the MNIST-1D CNN (configs/mnist1d/cnn.py) on MNIST-1D written to an .npz;
  - ResNet-18 on a generated CIFAR-shaped set (uint8 32x32x3, 10 classes) of --size_gb, larger
    than the memory this run allows: `dataset.pipeline=auto` with --device_memory_fraction
    must choose grain. The device path runs on its first 50,000 rows (the step's speed does
    not depend on how many rows the device holds).
"""
import argparse
import importlib.util
import os
import shutil
import sys
import zipfile

import numpy as np

from recipe_jax.config import defaults
from recipe_jax.data import datasets, sources
from recipe_jax.engine import experiment, training


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def write_npz_in_chunks(path: str, arrays: dict, chunk_rows: int = 20_000) -> None:
  """An uncompressed .npz written member by member and chunk by chunk: `arrays` maps a name
  to (shape, dtype, fill(start, stop) -> rows), so the whole set is never in memory."""
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED, allowZip64=True) as archive:
    for name, (shape, dtype, fill) in arrays.items():
      with archive.open(f'{name}.npy', 'w', force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {
            'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
            'shape': shape})
        for start in range(0, shape[0], chunk_rows):
          rows = fill(start, min(start + chunk_rows, shape[0]))
          member.write(np.ascontiguousarray(rows, dtype).tobytes())


def cifar_shaped(path: str, num_train: int, num_test: int = 1000) -> None:
  """Random uint8 images whose label is a function of the image, so the net can learn."""
  def images(offset):
    def fill(start, stop):
      rng = np.random.default_rng([offset, start])
      return rng.integers(0, 256, (stop - start, 32, 32, 3), dtype=np.uint8)
    return fill

  def labels(offset):
    fill = images(offset)
    return lambda start, stop: fill(start, stop)[:, 0, :10, 0].argmax(1).astype(np.int32)

  write_npz_in_chunks(path, {
      'x_train': ((num_train, 32, 32, 3), np.uint8, images(0)),
      'y_train': ((num_train,), np.int32, labels(0)),
      'x_test': ((num_test, 32, 32, 3), np.uint8, images(1)),
      'y_test': ((num_test,), np.int32, labels(1))})


def mnist1d_npz(path: str) -> None:
  cfg = load_config('configs/mnist1d/cnn.py').dataset
  x_train, y_train, x_test, y_test, _, _ = sources.arrays(cfg)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def train(config, workdir: str) -> dict:
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resumed one
  exp = experiment.build(config)
  summary = training.train_and_evaluate(exp, workdir)
  return {'pipeline': 'grain' if exp.streamed else 'device', **summary}


def report(name: str, runs: list) -> None:
  """Medians over the repeats of each pipeline, with their range."""
  print(f'\n{name}')
  medians = {}
  for pipeline in ('device', 'grain'):
    rate = [r['examples_per_s'] for r in runs if r['pipeline'] == pipeline]
    wait = [100 * r['data_wait_fraction'] for r in runs if r['pipeline'] == pipeline]
    medians[pipeline] = np.median(rate)
    print(f'  {pipeline:6s} {np.median(rate):>9,.0f} examples/s (range {min(rate):,.0f}-'
          f'{max(rate):,.0f})  data wait {np.median(wait):5.2f}% (range {min(wait):.2f}-'
          f'{max(wait):.2f})')
  print(f"  grain / device examples/s: {medians['grain'] / medians['device']:.3f}  "
        '(goal: data wait < 5%)')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', default='/tmp/bench_input')
  parser.add_argument('--size_gb', type=float, default=2.0)
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--resnet_steps', type=int, default=10)
  parser.add_argument('--device_memory_fraction', type=float, default=0.01)
  parser.add_argument('--skip_resnet', action='store_true')
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  print(f'device memory (or host memory on CPU): {datasets.device_memory_bytes() / 1e9:.1f} GB')

  mnist = os.path.join(args.workdir, 'mnist1d.npz')
  mnist1d_npz(mnist)
  runs = []
  for repeat in range(args.repeats + 1):  # the first round warms the caches up: not counted
    for pipeline in ('device', 'grain'):
      c = load_config('configs/mnist1d/cnn.py')
      c.dataset.name, c.dataset.pipeline = f'npz:{mnist}', pipeline
      c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = args.steps
      run = train(c, os.path.join(args.workdir, f'mnist1d_{pipeline}'))
      runs += [run] if repeat else []
  report(f'MNIST-1D CNN, batch 100, {args.steps} steps, {args.repeats} repeats', runs)
  if args.skip_resnet:
    return

  big = os.path.join(args.workdir, 'cifar_shaped.npz')
  num_train = int(args.size_gb * 1e9 / (32 * 32 * 3))
  if not os.path.isfile(big) or os.path.getsize(big) < num_train * 3072:
    print(f'writing {num_train:,} CIFAR-shaped images ({args.size_gb:g} GB) to {big}')
    cifar_shaped(big, num_train)
  small = os.path.join(args.workdir, 'cifar_shaped_50k.npz')
  if not os.path.isfile(small):
    x = sources.npz_member(big, 'x_train')
    y = np.asarray(sources.npz_member(big, 'y_train'))
    test = {k: sources.npz_member(big, k)[:] for k in ('x_test', 'y_test')}
    np.savez(small, x_train=x[:50_000], y_train=y[:50_000], **test)
  runs = []
  for name, rows, pipeline in ((small, 50_000, 'device'), (big, num_train, 'auto')):
    c = defaults.get_config()
    c.dataset.name, c.dataset.pipeline = f'npz:{name}', pipeline
    c.dataset.val_fraction = 256 / rows  # 256 in both: the last eval is inside the timed loop
    c.dataset.device_memory_fraction = args.device_memory_fraction
    c.model.name, c.batch_size, c.eval_batch_size = 'resnet18', 128, 500
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = 'sgd', 0.1, 0.9
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = args.resnet_steps
    runs.append(train(c, os.path.join(args.workdir, f'resnet18_{pipeline}')))
  if runs[-1]['pipeline'] != 'grain':
    sys.exit('pipeline=auto did not choose grain: lower --device_memory_fraction')
  report(f'ResNet-18, CIFAR-shaped {num_train:,} x 32x32x3 uint8 ({args.size_gb:g} GB on disk, '
         f'{4 * args.size_gb:g} GB as float32), batch 128, {args.resnet_steps} steps', runs)


if __name__ == '__main__':
  main()
