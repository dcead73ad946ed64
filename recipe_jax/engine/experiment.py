"""One place that builds, from a config, everything a stage needs: the dataset, the device mesh,
the model, optimizer and losses, the initial state, and the compiled train and eval steps.

A stage is then only what makes it different: `train` runs the loop, `sanity` checks the
pieces, `lr_find` swaps the schedule.
"""
import dataclasses
from typing import Any, Callable

import numpy as np
from absl import logging

from recipe_jax.data import datasets as data_lib
from recipe_jax.engine import evaluate, state as state_lib, steps, training
from recipe_jax import rng
from recipe_jax.engine.mesh import AXIS, Mesh, make_mesh, put_replicated, require_divisible
from recipe_jax.errors import UserError
from recipe_jax.model import augment, losses, models, optim
from recipe_jax.engine import warm_start

KEEP = object()  # "as configured", for arguments where None means "off"


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: Any
  dataset: data_lib.Dataset
  mesh: Mesh
  model: Any  # flax.linen.Module
  tx: Any  # optax.GradientTransformation
  loss_fn: Callable  # the configured loss: evaluation, checks
  train_loss_fn: Callable  # with label smoothing: what the train step minimises
  augmentation: augment.Settings | None
  output_bias: np.ndarray | None  # the log class priors ("init well"), or None

  def initial_state(self, seed: int | None = None, ema: bool = False) -> state_lib.TrainState:
    """The state before step 0, on the host (from the 'init' stream of `seed`)."""
    seed = self.config.seed if seed is None else seed
    return state_lib.init_state(self.model, self.tx, self.dataset.x_train.shape[1:], seed,
                                self.output_bias, ema=ema)

  @property
  def streamed(self) -> bool:
    """Whether training batches are read from storage step by step (dataset.pipeline=grain)."""
    return isinstance(self.dataset.x_train, data_lib.Rows)

  def step_settings(self, steps_per_epoch: int, *, batch_size: int | None = None, tx=None,
                    augmentation=KEEP, ema_decay: float | None = None) -> steps.StepSettings:
    """The configured train step; a short run may change its batch, optimizer, augmentation
    or EMA. `optimizer.accumulate_steps` holds wherever it divides a device's batch."""
    c = self.config
    batch_size = batch_size or c.batch_size
    micro = c.optimizer.accumulate_steps
    if (batch_size // self.mesh.size) % micro:
      logging.info('a batch of %d: no accumulate_steps=%d micro-batches; the whole batch at once',
                   batch_size, micro)
      micro = 1
    return steps.StepSettings(
        self.model, tx or self.tx, batch_size, steps_per_epoch, self.train_loss_fn,
        self.augmentation if augmentation is KEEP else augmentation,
        c.ema_decay if ema_decay is None else ema_decay, micro)

  def train_step(self, steps_per_epoch: int, side_by_side: bool = False):
    """The run's jitted train step (see `steps.compile_train_step`)."""
    return steps.compile_train_step(self.step_settings(steps_per_epoch), self.mesh,
                                    side_by_side, self.streamed)

  def run_steps(self, x, y, num_steps: int, *, seed: int | None = None,
                batch_size: int | None = None, augmentation=KEEP, every: int = 0,
                callback=None, extra_hooks=()):
    """A short run from a fresh init of `seed` on (x, y) (see `training.run_steps`)."""
    seed = self.config.seed if seed is None else seed
    batch_size = batch_size or self.config.batch_size
    require_divisible(self.mesh.size, {'batch_size': batch_size})
    return training.run_steps(
        self, self.initial_state(seed), x, y, num_steps=num_steps, seed=seed,
        batch_size=batch_size,
        augmentation=self.augmentation if augmentation is KEEP else augmentation,
        every=every, callback=callback, extra_hooks=extra_hooks)

  def evaluate(self, state, x, y) -> dict:
    """{'loss', 'accuracy'} of a host state on (x, y) in eval mode, with the configured loss:
    the same evaluation path as training's."""
    state = put_replicated(self.mesh, state)
    return evaluate.compile_evaluator(self.model, self.mesh, state, x, y,
                                      self.config.eval_batch_size, self.loss_fn)(state)

  def apply_fn(self, state):
    """(params, x, train) -> logits with the state's BatchNorm statistics, for checks."""
    return state_lib.make_apply_fn(self.model, state.batch_stats,
                                   rng.stream_key(self.config.seed, 'dropout', 0))


def in_memory(exp: Experiment) -> Experiment:
  """`exp` with a streamed training split read into memory, for stages whose checks slice and
  jit it freely (sanity); unchanged on the device path."""
  if not exp.streamed:
    return exp
  dataset = dataclasses.replace(exp.dataset, x_train=np.asarray(exp.dataset.x_train))
  return dataclasses.replace(exp, dataset=dataset)


def initial_output_bias(config, dataset) -> np.ndarray | None:
  """The log class priors when `model.log_prior_output_bias` is on, else None."""
  if not config.model.log_prior_output_bias:
    return None
  return models.class_log_prior(dataset.y_train, dataset.num_classes)


def build(config, *, num_train_steps: int | None = None, schedule=None,
          label_smoothing: bool = True) -> Experiment:
  """Everything `config` describes. `num_train_steps` (default: config's) sizes the learning-rate
  schedule, `schedule` replaces it (lr_find); `label_smoothing=False` trains on the plain loss
  (the sanity checks need a loss that can reach zero)."""
  dataset = data_lib.load(config.dataset)
  data_lib.check_labels(dataset)
  mesh = make_mesh()
  require_divisible(mesh.size, {'batch_size': config.batch_size,
                                'eval_batch_size': config.eval_batch_size})
  micro = config.optimizer.accumulate_steps
  if micro < 1 or (config.batch_size // mesh.size) % micro:
    raise UserError(f'optimizer.accumulate_steps={micro} must be >= 1 and divide each '
                    f"device's batch ({config.batch_size} / {mesh.size} devices = "
                    f'{config.batch_size // mesh.size})')
  models.check_input(config.model, dataset.x_train.shape[1:])
  model = models.create(config.model, dataset.num_classes, bn_axis_name=AXIS,
                        compute_dtype=config.compute_dtype)
  tx = warm_start.freeze(optim.create(config.optimizer, num_train_steps or config.num_train_steps,
                                     schedule=schedule), config.init_from_freeze)
  loss_fn = losses.create(config.loss)
  train_loss_fn = losses.create(config.loss, config.label_smoothing if label_smoothing else 0.0)
  augmentation = augment.settings(config.augment, dataset.num_classes)
  if augment.mixes(augmentation) and config.loss not in losses.LOSSES:
    raise UserError(f"augment.mixup / augment.cutmix train on soft targets, which loss "
                    f"'{config.loss}' does not take; use loss=cross_entropy")
  if augment.mixes(augmentation) and isinstance(dataset.x_train, data_lib.Rows):
    raise UserError('augment.mixup / augment.cutmix draw partners from the whole training '
                    'split, which dataset.pipeline=grain does not hold; use pipeline=device')
  return Experiment(config, dataset, mesh, model, tx, loss_fn, train_loss_fn, augmentation,
                    initial_output_bias(config, dataset))

