"""The one evaluation path: a split in whole batches sharded over the devices, the model in
eval mode: metrics (`make_eval_fn`, `compile_evaluator`) and predictions (`probabilities`)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from recipe_jax.engine import compiled
from recipe_jax.engine.mesh import AXIS, put_replicated, put_sharded
from recipe_jax.engine.state import apply_model
from recipe_jax.model import losses, user_code


def pad_for_eval(x: np.ndarray, y: np.ndarray, eval_batch_size: int):
  """Pads to a whole number of eval batches; `mask` is 1 for real examples."""
  num_pad = -len(y) % eval_batch_size
  mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(num_pad, np.float32)])
  x = np.concatenate([x, np.zeros((num_pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros(num_pad, y.dtype)])
  return x, y, mask


@compiled.cached
def make_eval_fn(model, mesh: Mesh, batch_size: int, loss_fn=losses.cross_entropy,
                 use_ema: bool = False, side_by_side: bool = False):
  """(state, x, y, mask) -> {'loss', 'accuracy'} over a padded split sharded over devices:
  the one evaluation path of every stage, with the configured loss. With `side_by_side` the
  state has a leading seed axis, and so do the metrics."""
  local_batch = batch_size // mesh.size

  def eval_fn(state, x, y, mask):
    params = state.ema_params if use_ema else state.params
    variables = {'params': params, 'batch_stats': state.batch_stats}

    def one_batch(batch):
      bx, by, bmask = batch
      logits = apply_model(model, variables, bx, False)
      return jnp.stack([jnp.sum(loss_fn(logits, by) * bmask),
                        jnp.sum((jnp.argmax(logits, -1) == by) * bmask), jnp.sum(bmask)])

    chunks = jax.tree.map(lambda a: a.reshape(-1, local_batch, *a.shape[1:]), (x, y, mask))
    loss_sum, correct, count = jax.lax.psum(jnp.sum(jax.lax.map(one_batch, chunks), 0), AXIS)
    return {'loss': loss_sum / count, 'accuracy': correct / count}

  body = jax.vmap(eval_fn, in_axes=(0, None, None, None)) if side_by_side else eval_fn
  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                          out_specs=P(), check_vma=False)
  return jax.jit(sharded)


def eval_batch_size(num_examples: int, configured: int, num_devices: int) -> int:
  """Never pads a small split up to a large eval batch; stays divisible by the device count."""
  return min(configured, -(-max(num_examples, 1) // num_devices) * num_devices)


def compile_evaluator(model, mesh: Mesh, state, x, y, configured_batch: int, loss_fn,
                      use_ema: bool = False, side_by_side: bool = False):
  """The split placed on the devices (padded) and its evaluation compiled ahead of time, so a
  model that cannot be evaluated fails before training, not at the first eval.
  Returns evaluate(state) -> {'loss', 'accuracy'} as floats (side by side: numpy arrays, one
  value per seed)."""
  batch = eval_batch_size(len(y), configured_batch, mesh.size)
  arrays = [put_sharded(mesh, a) for a in pad_for_eval(x, y, batch)]
  with user_code.phase('in eval mode'):
    program = make_eval_fn(model, mesh, batch, loss_fn, use_ema,
                           side_by_side).lower(state, *arrays).compile()
  to_host = np.asarray if side_by_side else float
  return lambda state: {k: to_host(v) for k, v in program(state, *arrays).items()}


def compile_splits(exp, state) -> dict:
  """Each split's evaluation, compiled once: {'val': evaluate, 'test': ..., 'train_split': ...}."""
  config, dataset = exp.config, exp.dataset
  named = {'val': (dataset.x_val, dataset.y_val), 'test': (dataset.x_test, dataset.y_test)}
  if config.eval_train_split:
    named['train_split'] = (dataset.x_train, dataset.y_train)
  return {name: compile_evaluator(exp.model, exp.mesh, state, x, y, config.eval_batch_size,
                                  exp.loss_fn, config.ema_decay > 0)
          for name, (x, y) in named.items()}


def split_metrics(evaluators: dict, state, split: str) -> dict:
  """{'eval_loss', 'eval_accuracy'} for 'val', {'test_loss', ...} for 'test', and so on."""
  prefix = 'eval' if split == 'val' else split
  return {f'{prefix}_{k}': v for k, v in evaluators[split](state).items()}


def _batched_logits(model, variables, x, local_batch: int):
  """Eval-mode logits of this device's rows, `local_batch` at a time (a lax.map, so one
  batch's activations are alive at once)."""
  chunks = x.reshape(-1, local_batch, *x.shape[1:])
  logits = jax.lax.map(lambda chunk: apply_model(model, variables, chunk, False), chunks)
  return logits.reshape(-1, logits.shape[-1])


@compiled.cached
def _logits_fn(model, mesh: Mesh, batch_size: int):
  local_batch = batch_size // mesh.size

  def gathered_logits(variables, x):  # every device gets all rows: on many hosts each reads
    logits = _batched_logits(model, variables, x, local_batch)  # its own copy
    return jax.lax.all_gather(logits, AXIS, tiled=True)
  sharded = jax.shard_map(gathered_logits, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                          check_vma=False)
  return jax.jit(sharded)


def probabilities(exp, state, x: np.ndarray, params=None) -> np.ndarray:
  """Softmax probabilities in eval mode on the host: of `params` when given, else of the
  weights the run evaluates (EMA when it keeps them)."""
  if params is None:
    params = state.ema_params if exp.config.ema_decay > 0 else state.params
  variables = put_replicated(exp.mesh, {'params': params, 'batch_stats': state.batch_stats})
  batch = eval_batch_size(len(x), exp.config.eval_batch_size, exp.mesh.size)
  logits_fn, found = _logits_fn(exp.model, exp.mesh, batch), []
  for start in range(0, len(x), batch):  # a batch at a time: x may be a split in storage (Rows)
    chunk = np.asarray(x[start:start + batch])
    padded, _, _ = pad_for_eval(chunk, np.zeros(len(chunk), np.int32), batch)
    with user_code.phase('in eval mode'):
      logits = logits_fn(variables, put_sharded(exp.mesh, padded))
    found.append(np.asarray(logits)[:len(chunk)])
  return softmax(np.concatenate(found))


def softmax(logits: np.ndarray) -> np.ndarray:
  """In float64 on the host: probabilities of confident predictions stay distinguishable."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)
