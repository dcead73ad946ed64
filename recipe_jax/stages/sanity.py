"""stage='sanity': recipe step 2, the training skeleton and its dumb baselines.

Every check runs against the configured model, data and loss through the same init, batch
order and train step as training. Writes sanity/{verdicts.json, report.md, *.png}; any FAIL
ends the run with exit code 1.
"""
import os

import jax
import numpy as np

from recipe_jax import (augment, checks, data as data_lib, losses, models, optim, plots, report,
                        rng, train)
from recipe_jax.errors import UserError


def run(config, workdir: str) -> list:
  out = os.path.join(workdir, 'sanity')
  os.makedirs(out, exist_ok=True)
  cfg = config.sanity
  dataset = data_lib.load(config.dataset)
  if len(dataset.y_val) == 0:
    raise UserError('the sanity stage compares baselines on validation data; set '
                    'dataset.val_fraction > 0 (e.g. 0.05)')
  train.require_divisible(jax.device_count(), {'batch_size': config.batch_size,
                                               'sanity.overfit_examples': cfg.overfit_examples})
  model = models.create(config.model, dataset.num_classes, bn_axis_name=train.AXIS)
  loss_fn = losses.create(config.loss)  # without label smoothing: one batch must reach ~0 loss
  log_prior = models.class_log_prior(dataset.y_train, dataset.num_classes)
  bias = train.output_bias(config, dataset)
  tx = optim.create(config.optimizer, cfg.steps)

  augmentation = augment.settings(config.augment)

  def short_run(x, y, steps, seed=config.seed, batch_size=config.batch_size,
                augmentation=augmentation, **kwargs):
    return train.run_steps(model, tx, loss_fn, x, y, num_steps=steps, batch_size=batch_size,
                           seed=seed, output_bias=bias, augmentation=augmentation, **kwargs)

  verdicts, images = [], {}

  def add(verdict, *pictures):
    verdicts.append(verdict)
    images[verdict.check] = list(pictures)

  add(checks.fixed_seed(lambda s: short_run(dataset.x_train, dataset.y_train, cfg.seed_steps,
                                            seed=s)[0].params, config.seed))

  state = train.init_state(model, tx, dataset.x_train.shape[1:], config.seed, bias)
  apply_fn = train.make_apply_fn(model, state.batch_stats,
                                 rng.stream_key(config.seed, 'dropout', 0))
  first_x, first_y = _first_batch(config, dataset, augmentation)
  add(*_loss_at_init(out, cfg, config, dataset, apply_fn, state.params, loss_fn, log_prior))
  add(checks.init_well(lambda p: apply_fn(p, first_x[:8], False), state.params, log_prior,
                       config.model.log_prior_output_bias))
  add(checks.inputs_before_net(first_x), _input_grid(out, first_x, first_y))

  x8, y8 = first_x[:cfg.dependency_examples], first_y[:cfg.dependency_examples]
  dependency = checks.batch_dependency(apply_fn, state.params, x8, y8, loss_fn,
                                       uses_batch_statistics=bool(state.batch_stats))
  add(dependency, _dependency_matrix(out, dependency))
  grad_fn = jax.jit(jax.grad(lambda p, x, y: loss_fn(apply_fn(p, x, True), y).mean()))
  add(checks.gradients(grad_fn, state.params, first_x, first_y))

  real, zero_input, dynamics = _short_runs(cfg, dataset, short_run, apply_fn)
  baselines = checks.dumb_baselines(dataset.y_val, np.exp(log_prior), zero_input['val'],
                                    real['val'], cfg.baseline_margin, config.human_baseline)
  add(baselines, _baseline_bars(out, baselines))
  add(checks.decreasing_loss(real['history']['loss'], cfg.min_loss_drop),
      _loss_curves(out, real['history'], zero_input['history']))
  add(checks.prediction_dynamics(dynamics['probabilities'], dynamics['labels']),
      _dynamics_plot(out, dynamics))
  add(*_overfit_one_batch(out, cfg, dataset, short_run, apply_fn))
  add(checks.human_baseline(config.human_baseline, real['val']['accuracy'], cfg.steps))

  report.write(out, f'Sanity: {config.model.name} on {config.dataset.name}', verdicts, images)
  report.raise_if_failed(verdicts, out)
  return verdicts


def _first_batch(config, dataset, augmentation):
  """Training step 0's batch exactly as the train step gathers and augments it."""
  per_epoch = data_lib.steps_per_epoch(len(dataset.y_train), config.batch_size)
  perm = data_lib.epoch_permutation(config.seed, 0, len(dataset.y_train))
  x, y = jax.jit(train.batch_inputs, static_argnums=(4, 5, 7, 9))(
      dataset.x_train, dataset.y_train, perm, 0, config.batch_size, per_epoch, 0,
      config.batch_size, config.seed, augmentation)
  return np.asarray(x), np.asarray(y)


def _loss_at_init(out, cfg, config, dataset, apply_fn, params, loss_fn, log_prior):
  """Train-mode loss of the initial model on the first batches of epoch 0 (fixed size, so the
  tolerance does not depend on the training batch size)."""
  size = min(cfg.init_loss_batch_size, len(dataset.y_train) // 2)
  count = min(cfg.init_loss_batches, len(dataset.y_train) // size)
  perm = data_lib.epoch_permutation(config.seed, 0, len(dataset.y_train))
  batch_loss = jax.jit(lambda p, x, y: loss_fn(apply_fn(p, x, True), y).mean())
  batch_losses = [float(batch_loss(params, dataset.x_train[idx], dataset.y_train[idx]))
                  for idx in np.split(perm[:count * size], count)]
  expected = checks.expected_initial_loss(np.exp(log_prior), config.model.log_prior_output_bias)
  verdict = checks.loss_at_init(batch_losses, expected, cfg.init_loss_max_z)
  path = os.path.join(out, 'loss_at_init.png')
  spread = verdict.evidence['tolerance']
  plots.curves(path, {'loss of each batch': (np.arange(count), batch_losses)}, 'batch', 'loss',
               hlines={'expected': expected, 'expected + tolerance': expected + spread,
                       'expected - tolerance': expected - spread})
  return verdict, path


def _short_runs(cfg, dataset, short_run, apply_fn):
  """The real model and the same model on zeroed inputs, for the same steps and seed;
  predictions on a fixed validation batch recorded every `dynamics_every` steps."""
  x_fixed = dataset.x_val[:cfg.dynamics_examples]
  predict = jax.jit(lambda p, x: jax.nn.softmax(apply_fn(p, x, False)))
  frames, frame_steps = [], []

  def record(step, state):
    frames.append(np.asarray(predict(state.params, x_fixed)))
    frame_steps.append(step)

  results = {}
  for name, x_train, x_val in (('real', dataset.x_train, dataset.x_val),
                               ('zero_input', np.zeros_like(dataset.x_train),
                                np.zeros_like(dataset.x_val))):
    watch = dict(every=cfg.dynamics_every, callback=record) if name == 'real' else {}
    state, history = short_run(x_train, dataset.y_train, cfg.steps, **watch)
    results[name] = {'history': history,
                     'val': _evaluate(apply_fn, state.params, x_val, dataset.y_val)}
  dynamics = {'probabilities': np.stack(frames), 'steps': frame_steps,
              'labels': dataset.y_val[:cfg.dynamics_examples]}
  return results['real'], results['zero_input'], dynamics


def _evaluate(apply_fn, params, x, y, batch=1000):
  """Validation accuracy and mean loss (cross-entropy of the softmax, whatever the loss)."""
  logits_fn = jax.jit(lambda p, b: apply_fn(p, b, False))
  logits = np.concatenate([np.asarray(logits_fn(params, x[i:i + batch]))
                           for i in range(0, len(y), batch)])
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  return {'accuracy': float(np.mean(logits.argmax(-1) == y)),
          'loss': float(-np.mean(log_probs[np.arange(len(y)), y]))}


def _overfit_one_batch(out, cfg, dataset, short_run, apply_fn):
  x, y = dataset.x_train[:cfg.overfit_examples], dataset.y_train[:cfg.overfit_examples]
  # Without augmentation: the point is to memorise these exact examples.
  state, history = short_run(x, y, cfg.overfit_steps, batch_size=len(y), augmentation=None)
  verdict = checks.overfit_one_batch(history['loss'], history['accuracy'], cfg.overfit_max_loss)
  curve = os.path.join(out, 'overfit_one_batch.png')
  steps = np.arange(1, len(history['loss']) + 1)
  plots.curves(curve, {'loss': (steps, history['loss']),
                       'accuracy': (steps, history['accuracy'])}, 'step', 'on the one batch',
               logy=True, hlines={'target loss': cfg.overfit_max_loss})
  probabilities = np.asarray(jax.nn.softmax(apply_fn(state.params, x, False)))
  predicted = probabilities.argmax(-1)
  verdict.evidence['labels'], verdict.evidence['predictions'] = y, predicted
  grid = os.path.join(out, 'overfit_predictions.png')
  plots.grid(grid, list(x), [f'label {t} pred {p} ({probabilities[i, p]:.2f})'
                             for i, (t, p) in enumerate(zip(y, predicted))], columns=4)
  return verdict, curve, grid


def _input_grid(out, x, y, limit=32):
  path = os.path.join(out, 'inputs_before_net.png')
  plots.grid(path, list(x[:limit]), [f'#{i} y={label}' for i, label in enumerate(y[:limit])],
             columns=8)
  return path


def _dependency_matrix(out, verdict):
  path = os.path.join(out, 'batch_dependency.png')
  plots.matrix(path, np.asarray(verdict.evidence['eval']['dependency']), 'input j', 'loss i',
               '|d loss_i / d x_j|, eval mode')
  return path


def _baseline_bars(out, verdict):
  table = verdict.evidence['validation']
  path = os.path.join(out, 'baselines.png')
  plots.bars(path, {name: row['accuracy'] for name, row in table.items()
                    if name != 'class prior'},  # the prior predicts the majority class
             'validation accuracy')
  return path


def _loss_curves(out, real, zero_input):
  path = os.path.join(out, 'training_loss.png')
  steps = np.arange(1, len(real['loss']) + 1)
  plots.curves(path, {'model': (steps, real['loss']), 'zero input': (steps, zero_input['loss'])},
               'step', 'training loss')
  return path


def _dynamics_plot(out, dynamics):
  path = os.path.join(out, 'prediction_dynamics.png')
  plots.prediction_dynamics(path, dynamics['probabilities'], dynamics['steps'],
                            dynamics['labels'])
  return path
