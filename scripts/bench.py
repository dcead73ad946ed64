"""Pipeline step time vs a minimal hand-written JAX loop, same model, batch, optimizer and data.

  python scripts/bench.py --config=configs/mnist1d/cnn.py [--steps=3000] [--repeats=2]

The pipeline runs with everything on (metrics, TensorBoard/console writers, progress reports,
periodic eval and orbax checkpoints); the minimal loop is one jitted step over the same
on-device arrays. Both are timed after compilation, after one warm-up pipeline run; runs
alternate, and the ratio reported is the median of the per-repeat ratios (each repeat times
both loops back to back, so a noisy moment on a shared machine hits both), with its range.
"""
import argparse
import importlib.util
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recipe_jax.data import datasets as data_lib
from recipe_jax.engine import batches, experiment, mesh as mesh_lib, state as state_lib, training
from recipe_jax.model import models, optim


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def minimal_loop_seconds_per_step(config, dataset, steps):
  model = models.create(config.model, dataset.num_classes)
  tx = optim.create(config.optimizer, config.num_train_steps)
  params = state_lib.init_state(model, tx, dataset.x_train.shape[1:], config.seed).params
  opt_state = tx.init(params)
  x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  batch = config.batch_size
  per_epoch = len(dataset.y_train) // batch

  @jax.jit
  def step(params, opt_state, perm, i):
    idx = jax.lax.dynamic_slice_in_dim(perm, (i % per_epoch) * batch, batch)

    def loss_fn(p):
      logits = model.apply({'params': p}, x[idx])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  perm = jnp.asarray(np.random.default_rng(0).permutation(len(dataset.y_train)))
  params, opt_state = step(params, opt_state, perm, 0)  # compile
  jax.block_until_ready(params)
  start = time.perf_counter()
  for i in range(1, steps + 1):
    params, opt_state = step(params, opt_state, perm, i)
  jax.block_until_ready(params)
  return (time.perf_counter() - start) / steps


def pipeline_seconds_per_step(config, steps):
  config.num_train_steps = steps
  with tempfile.TemporaryDirectory() as workdir:
    summary = training.train_and_evaluate(experiment.build(config), workdir)
  return config.batch_size / summary['examples_per_s']


def batch_order_seconds(config, dataset, steps):
  """Time the pipeline spends producing batch orders: one permutation per epoch, on the host,
  then copied to the devices (here each copy is waited for, so this is an upper bound)."""
  mesh, num = mesh_lib.make_mesh(), len(dataset.y_train)
  order = batches.BatchOrder(config.seed, num, config.batch_size)
  epochs = steps // order.steps_per_epoch + 1
  start = time.perf_counter()
  for epoch in range(epochs):
    jax.block_until_ready(mesh_lib.put_replicated(mesh, order.epoch(epoch)))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='configs/mnist1d/cnn.py')
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  config = load_config(args.config)
  dataset = data_lib.load(config.dataset)
  # Warm-up: the first pipeline run in a process also pays one-time costs in background
  # threads (the TensorBoard writer initialising TensorFlow), which are not steady state.
  pipeline_seconds_per_step(load_config(args.config), 200)
  minimal, pipeline = [], []
  for _ in range(args.repeats):
    minimal.append(minimal_loop_seconds_per_step(config, dataset, args.steps))
    pipeline.append(pipeline_seconds_per_step(load_config(args.config), args.steps))
  ratios = np.array(pipeline) / np.array(minimal)
  median_minimal, median_pipeline = np.median(minimal), np.median(pipeline)
  data_wait = batch_order_seconds(config, dataset, args.steps) / (median_pipeline * args.steps)
  print(f'config: {args.config}  steps: {args.steps}  batch: {config.batch_size}  '
        f'devices: {jax.device_count()} x {jax.devices()[0].platform}  repeats: {args.repeats}')
  print(f'minimal loop : {median_minimal * 1e3:.3f} ms/step (median)  '
        f'{config.batch_size / median_minimal:,.0f} examples/s')
  print(f'pipeline     : {median_pipeline * 1e3:.3f} ms/step (median)  '
        f'{config.batch_size / median_pipeline:,.0f} examples/s  (logging, eval, checkpoints on)')
  print(f'ratio pipeline / minimal: median {np.median(ratios):.3f}  range {ratios.min():.3f}-'
        f'{ratios.max():.3f}  (goal: median <= 1.10)')
  print(f'fraction of pipeline time producing batch orders (upper bound): {data_wait:.2%}')


if __name__ == '__main__':
  main()
