"""stage='sanity': recipe step 2, the training skeleton and its dumb baselines.

Every check runs against the configured model, data and loss through the same init, batch
order and train step as training, and evaluates with the configured loss. An exception inside
the model or the loss becomes the FAIL of the check that met it, and the other checks still
run. Writes sanity/{verdicts.json, report.md, result.json, *.png}; any FAIL ends the run with
exit code 1.
"""
import os

import jax
import numpy as np
from absl import logging

from recipe_jax import console, files
from recipe_jax.data import datasets as data_lib
from recipe_jax.diagnose import checks, diagnosis, inside, probes, registry
from recipe_jax.engine import batches, experiment, loop, state as state_lib, steps, training
from recipe_jax import rng
from recipe_jax.engine.mesh import require_divisible
from recipe_jax.errors import UserError
from recipe_jax.model import models, optim, user_code
from recipe_jax.report import plots, results as report
from recipe_jax.verdicts import StageResult, Verdict

FILES = ['sanity/report.md', 'sanity/verdicts.json']
# the registered checks, in their order; the diagnosis reads them all after they ran
CHECKS = tuple(c for c in registry.names('sanity') if c != 'diagnosis')
UPDATE_RATIO_POINTS = 50  # per-layer update ratios recorded over a short run


def once(compute):
  """compute() the first time it is needed; later calls return its value, or raise its error
  again (checks that need the same failed piece fail for the same reason, at once)."""
  memo = {}

  def get():
    if 'error' in memo:
      raise memo['error']
    if 'value' not in memo:
      try:
        memo['value'] = compute()
      except Exception as e:
        memo['error'] = e
        raise
    return memo['value']
  return get


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'sanity')
  files.makedirs(out)
  cfg = config.sanity
  # The plain loss, without label smoothing: one batch must be able to reach ~0 loss.
  exp = experiment.in_memory(experiment.build(config, num_train_steps=cfg.steps,
                                              label_smoothing=False))
  dataset = exp.dataset
  if len(dataset.y_val) == 0:
    raise UserError('the sanity stage compares baselines on validation data; set '
                    'dataset.val_fraction > 0 (e.g. 0.05)')
  require_divisible(exp.mesh.size, {'sanity.overfit_examples': cfg.overfit_examples})
  log_prior = models.class_log_prior(dataset.y_train, dataset.num_classes)
  state = once(exp.initial_state)
  apply_fn = once(lambda: exp.apply_fn(state()))
  first_x, first_y, first_positions = _first_batch(config, exp)
  dropout_key = rng.stream_key(config.seed, 'dropout', 0)
  variables = lambda: {'params': state().params, 'batch_stats': state().batch_stats}
  program = once(lambda: probes.read_program(exp.model, variables(), first_x, dropout_key))
  layer_order = once(lambda: probes.layer_order(exp.model, variables(), first_x, dropout_key))
  # every kernel layer: those seen in call order, then those no record saw (inside a loop)
  kernels = once(lambda: layer_order()[0] + layer_order()[1])
  updates = once(lambda: probes.UpdateRatios(kernels(), max(1, cfg.steps // UPDATE_RATIO_POINTS)))
  # the probes are diagnostics: their failure must not cost the symptoms' own short runs
  short_runs = once(lambda: _short_runs(cfg, exp, _or_none(updates)))

  def probe(which):
    params = state().params if which == 'init' else short_runs()[0]['state'].params
    batch_stats = state().batch_stats if which == 'init' else short_runs()[0]['state'].batch_stats
    return probes.measure(exp.model, exp.loss_fn, program(), layer_order()[0], kernels(),
                          params, batch_stats, first_x, first_y, dropout_key)
  at_init, after = once(lambda: probe('init')), once(lambda: probe('after'))
  after_or_none = lambda: _or_none(after)
  dependency_x, dependency_y = first_x[:cfg.dependency_examples], first_y[:cfg.dependency_examples]

  def dependency():
    verdict = checks.batch_dependency(apply_fn(), state().params, dependency_x, dependency_y,
                                      exp.loss_fn, bool(state().batch_stats))
    verdict.evidence.update(data_lib.source_rows(dataset, 'train',
                                                 first_positions[:cfg.dependency_examples]))
    return verdict, _dependency_matrix(out, verdict)

  def consistency():
    batch_stats = state().batch_stats
    keyed = jax.jit(lambda p, x, train, key: state_lib.make_apply_fn(exp.model, batch_stats, key)(
        p, x, train), static_argnums=(2,))
    keys = [rng.stream_key(config.seed, 'dropout', step) for step in (0, 1)]
    return (checks.eval_consistency(keyed, state().params, first_x[:16], keys),)

  def gradients():
    grad_fn = jax.jit(jax.grad(lambda p, x, y: exp.loss_fn(apply_fn()(p, x, True), y).mean()))
    return (checks.gradients(grad_fn, state().params, first_x, first_y,
                             lambda: short_runs()[0]['state'].params),)

  def signature():
    x, y = dataset.x_train[:probes.EXAMPLES], dataset.y_train[:probes.EXAMPLES]
    logits = {'uniform': np.zeros((len(y), dataset.num_classes), np.float32),
              'init': np.asarray(apply_fn()(state().params, x, False))}
    trained = _or_none(lambda: short_runs()[0]['state'])
    if trained is not None:
      logits['after the short run'] = np.asarray(state_lib.jitted_logits(exp.model)(
          {'params': trained.params, 'batch_stats': trained.batch_stats}, x))
    return checks.loss_signature(exp.loss_fn, y, dataset.num_classes, logits,
                                 builtin=config.loss == 'cross_entropy')
  loss_signature = once(signature)

  def baselines():
    real, zero_input, _ = short_runs()
    prior_logits = np.tile(log_prior, (len(dataset.y_val), 1))
    prior_loss = float(np.mean(jax.jit(exp.loss_fn)(prior_logits, dataset.y_val)))
    verdict = checks.dumb_baselines(dataset.y_val, np.exp(log_prior), zero_input['val'],
                                    real['val'], cfg.baseline_margin, config.human_baseline,
                                    prior_loss)
    return verdict, _baseline_bars(out, verdict)

  def decreasing():
    real, zero_input, _ = short_runs()
    return (checks.decreasing_loss(real['history']['loss'], cfg.min_loss_drop),
            _loss_curves(out, real['history'], zero_input['history']))

  def dynamics():
    frames = short_runs()[2]
    verdict = checks.prediction_dynamics(frames['probabilities'], frames['labels'])
    verdict.evidence.update(data_lib.source_rows(dataset, 'val', np.arange(len(frames['labels']))))
    return verdict, _dynamics_plot(out, frames)

  def inputs():
    verdict = checks.inputs_before_net(first_x)
    verdict.evidence.update(data_lib.source_rows(dataset, 'train', first_positions))
    return verdict, _input_grid(out, first_x, first_y, verdict.evidence['source_rows'])

  def seen():
    order, unseen = layer_order()
    verdict = inside.activations_seen(order, unseen, program())
    return verdict, _activation_histograms(out, at_init(), after_or_none(), order, program())

  def flow():
    # first and last in call order: only the layers seen, unless fewer than two were
    order = layer_order()[0] if len(layer_order()[0]) >= 2 else kernels()
    verdict = inside.gradient_flow(at_init(), after_or_none(), order, cfg.max_gradient_ratio,
                                   cfg.max_relative_gradient)
    steps_done, series = updates().series()
    verdict.evidence['update_ratio_median'] = inside.update_ratios(series)
    return (verdict, _gradient_norms(out, verdict), _update_ratio_plot(out, steps_done, series))

  runners = {
      'fixed_seed': lambda: (checks.fixed_seed(lambda s: exp.run_steps(
          dataset.x_train, dataset.y_train, cfg.seed_steps, seed=s)[0].params, config.seed),),
      'loss_at_init': lambda: _loss_at_init(out, cfg, config, exp, apply_fn(), state().params,
                                            log_prior),
      'init_well': lambda: (checks.init_well(jax.jit(lambda p: apply_fn()(p, first_x[:8], False)),
                                             state().params, log_prior,
                                             config.model.log_prior_output_bias,
                                             models.logits_rtol(exp.model)),),
      'inputs_before_net': inputs,
      'batch_dependency': dependency,
      'eval_consistency': consistency,
      'gradients': gradients,
      'dumb_baselines': baselines,
      'decreasing_loss': decreasing,
      'prediction_dynamics': dynamics,
      'loss_signature': lambda: (loss_signature(),),
      'overfit_one_batch': lambda: _overfit_one_batch(out, cfg, exp, _or_none(loss_signature)),
      'human_baseline': lambda: (checks.human_baseline(
          config.human_baseline, short_runs()[0]['val']['accuracy'], cfg.steps),),
      'activations_seen': seen,
      'gradient_flow': flow,
      'dead_units': lambda: (inside.dead_units(
          program(), at_init(), after_or_none(), state().params,
          config.optimizer.learning_rate, cfg.max_dead_fraction, cfg.min_gradient_share),),
      'saturation': lambda: (inside.saturation(program(), at_init(), after_or_none(),
                                               cfg.max_saturated_fraction,
                                               cfg.min_gradient_share),),
      'symmetric_init': lambda: (inside.symmetric_init(state().params, layer_order()[0],
                                                       cfg.max_copied_units),),
  }
  verdicts, images = [], {}
  title = f'Sanity: {config.model.name} on {config.dataset.name}'
  try:
    for check in CHECKS:
      verdict, *pictures = run_check(check, runners[check], config)
      verdicts.append(verdict)
      images[verdict.check] = [p for p in pictures if p]  # None: nothing to draw
    verdicts = diagnosis.explain(verdicts, _learning_rate_sweep(config, exp, verdicts),
                                 _median_update_ratio(updates), config.optimizer.learning_rate)
  except KeyboardInterrupt:  # the checks done so far are saved; a restart runs them all again
    loop.interrupted()
    return report.finish(workdir, StageResult('sanity', verdicts, {}, FILES, finished=False),
                         title, images)
  try:
    real, zero_input, _ = short_runs()
    metrics = {'model_val_accuracy': real['val']['accuracy'],
               'zero_input_val_accuracy': zero_input['val']['accuracy']}
  except Exception:
    metrics = {}  # the short runs failed: their checks' verdicts say why
  return report.finish(workdir, StageResult('sanity', verdicts, metrics, FILES), title, images)


def run_check(check: str, runner, config) -> tuple:
  """(verdict, *pictures); an exception inside the model, the loss or the check becomes this
  check's FAIL with the exception's one-line message, and the other checks still run."""
  try:
    return runner()
  except UserError:
    raise  # a bad config is the user's to fix before any check means anything
  except Exception as e:
    logging.info('check %s raised', check, exc_info=True, extra=console.FILE_ONLY)
    message = user_code.describe_failure(e, config.model.name, config.loss)
    return (Verdict(check, 'FAIL', f'could not run: {message}',
                    {'error': message, 'exception': type(e).__name__}),)


def _first_batch(config, exp):
  """Training step 0's batch exactly as the train step gathers and augments it, and the
  positions of its examples in the training split."""
  dataset = exp.dataset
  order = batches.BatchOrder(config.seed, len(dataset.y_train), config.batch_size)
  perm = order.epoch(0)
  x, y = jax.jit(steps.batch_inputs, static_argnums=(4, 5, 7, 9))(
      dataset.x_train, dataset.y_train, perm, 0, config.batch_size, order.steps_per_epoch, 0,
      config.batch_size, config.seed, exp.augmentation)
  return np.asarray(x), np.asarray(y), perm[:config.batch_size]


def _loss_at_init(out, cfg, config, exp, apply_fn, params, log_prior):
  """Train-mode loss of the initial model on the first batches of epoch 0 (fixed size, so the
  tolerance does not depend on the training batch size)."""
  dataset, loss_fn = exp.dataset, exp.loss_fn
  size = min(cfg.init_loss_batch_size, len(dataset.y_train) // 2)
  count = min(cfg.init_loss_batches, len(dataset.y_train) // size)
  perm = batches.BatchOrder(config.seed, len(dataset.y_train), size).epoch(0)
  batch_loss = jax.jit(lambda p, x, y: loss_fn(apply_fn(p, x, True), y).mean())
  batch_losses = [float(batch_loss(params, dataset.x_train[idx], dataset.y_train[idx]))
                  for idx in np.split(perm[:count * size], count)]
  expected = checks.expected_initial_loss(np.exp(log_prior), config.model.log_prior_output_bias,
                                          loss_fn, dataset.y_train)
  verdict = checks.loss_at_init(batch_losses, expected, cfg.init_loss_max_z,
                               cfg.init_loss_max_ratio)
  path = os.path.join(out, 'loss_at_init.png')
  spread = verdict.evidence['tolerance']
  plots.curves(path, {'loss of each batch': (np.arange(count), batch_losses)}, 'batch', 'loss',
               hlines={'expected': expected, 'expected + tolerance': expected + spread,
                       'expected - tolerance': expected - spread})
  return verdict, path


def _or_none(get):
  """get(), or None when the piece failed (its own check says why)."""
  try:
    return get()
  except Exception:
    return None


def _median_update_ratio(updates) -> float | None:
  """The median over layers of each layer's median update-to-weight ratio in the real short
  run, or None when it did not run."""
  try:
    ratios = list(inside.update_ratios(updates().series()[1]).values())
  except Exception:
    return None
  return float(np.median(ratios)) if ratios else None


def _learning_rate_sweep(config, exp, verdicts) -> dict | None:
  """When the loss does not fall or one batch cannot be memorised: the same one-batch run at
  other learning rates (`sanity.lr_sweep` factors), for the diagnosis. None otherwise."""
  failed = {v.check for v in verdicts if v.status == 'FAIL'}
  if not failed & {'decreasing_loss', 'overfit_one_batch'}:
    return None
  cfg, sweep = config.sanity, {}
  overfit = next((v for v in verdicts if v.check == 'overfit_one_batch'), None)
  target = cfg.overfit_max_loss + (overfit.evidence.get('floor', 0.0) if overfit else 0.0)
  x, y = exp.dataset.x_train[:cfg.overfit_examples], exp.dataset.y_train[:cfg.overfit_examples]
  for factor in cfg.lr_sweep:
    optimizer = config.optimizer.copy_and_resolve_references()
    optimizer.learning_rate = config.optimizer.learning_rate * factor
    try:
      _, history = training.run_steps(exp, exp.initial_state(), x, y, num_steps=cfg.overfit_steps,
                                      seed=config.seed, batch_size=len(y),
                                      tx=optim.create(optimizer, cfg.overfit_steps))
    except Exception:
      logging.info('learning-rate sweep at %gx raised', factor, exc_info=True,
                   extra=console.FILE_ONLY)
      continue
    loss, accuracy = float(history['loss'][-1]), float(history['accuracy'][-1])
    sweep[float(factor)] = {'final_loss': loss, 'final_accuracy': accuracy,
                            'fitted': bool(loss <= target and accuracy >= 1.0)}
  return sweep


def _short_runs(cfg, exp, update_ratios):
  """The real model and the same model on zeroed inputs, for the same steps and seed;
  predictions on a fixed validation batch recorded every `dynamics_every` steps."""
  dataset = exp.dataset
  x_fixed = dataset.x_val[:cfg.dynamics_examples]
  logits = state_lib.jitted_logits(exp.model)
  frames, frame_steps = [], []

  def record(step, state):
    # eval mode with the run's own BatchNorm statistics at that step, as its evaluation sees it
    frames.append(np.asarray(jax.nn.softmax(logits(
        {'params': state.params, 'batch_stats': state.batch_stats}, x_fixed))))
    frame_steps.append(step)

  results = {}
  for name, x_train, x_val in (('real', dataset.x_train, dataset.x_val),
                               ('zero_input', np.zeros_like(dataset.x_train),
                                np.zeros_like(dataset.x_val))):
    watch = dict(every=cfg.dynamics_every, callback=record,
                 extra_hooks=[loop.Hook(update_ratios)] if update_ratios else []
                 ) if name == 'real' else {}
    state, history = exp.run_steps(x_train, dataset.y_train, cfg.steps, **watch)
    results[name] = {'history': history, 'val': exp.evaluate(state, x_val, dataset.y_val),
                     'state': state}
  dynamics = {'probabilities': np.stack(frames), 'steps': frame_steps,
              'labels': dataset.y_val[:cfg.dynamics_examples]}
  return results['real'], results['zero_input'], dynamics


def _overfit_one_batch(out, cfg, exp, signature):
  """One batch trained on alone for `overfit_steps` (again as long once more while its loss is
  still falling), then judged in train mode and in eval mode (deterministic) against the
  loss's own floor (`signature`, the loss_signature verdict, when it found one)."""
  dataset = exp.dataset
  x, y = dataset.x_train[:cfg.overfit_examples], dataset.y_train[:cfg.overfit_examples]
  # Without augmentation: the point is to memorise these exact examples.
  state, history = exp.run_steps(x, y, cfg.overfit_steps, batch_size=len(y), augmentation=None)
  floor = 0.0
  if signature is not None and signature.cause == 'loss_floor':
    floor = float(np.mean(checks.lowest_loss(exp.loss_fn, y, dataset.num_classes)[1]))
  fitted = lambda h: h['loss'][-1] <= floor + cfg.overfit_max_loss and h['accuracy'][-1] >= 1
  if not fitted(history) and checks.still_falling(history['loss']) >= checks.STILL_FALLING:
    state, more = training.run_steps(exp, state, x, y, num_steps=cfg.overfit_steps,
                                     seed=exp.config.seed, batch_size=len(y))
    history = {k: np.concatenate([history[k], more[k]]) for k in history}
  logits = np.asarray(state_lib.jitted_logits(exp.model)(
      {'params': state.params, 'batch_stats': state.batch_stats}, x))
  eval_losses = np.asarray(jax.jit(exp.loss_fn)(logits, y))
  verdict = checks.overfit_one_batch(
      history['loss'], history['accuracy'], cfg.overfit_max_loss,
      eval_loss=float(eval_losses.mean()), eval_accuracy=float(np.mean(logits.argmax(-1) == y)),
      floor=floor, logit_range=float(np.max(logits.max(-1) - logits.min(-1))),
      num_classes=dataset.num_classes)
  curve = os.path.join(out, 'overfit_one_batch.png')
  steps = np.arange(1, len(history['loss']) + 1)
  plots.loss_and_accuracy(curve, steps, history['loss'], history['accuracy'],
                          f'training step on one batch of {len(y)} examples',
                          target_loss=floor + cfg.overfit_max_loss,
                          series={'eval mode (train=False), at the end': (
                              steps[-1:], [verdict.evidence['eval_loss']],
                              [verdict.evidence['eval_accuracy']])})
  probabilities = np.asarray(jax.nn.softmax(logits))
  predicted = probabilities.argmax(-1)
  verdict.evidence['labels'], verdict.evidence['predictions'] = y, predicted
  verdict.evidence.update(data_lib.source_rows(dataset, 'train', np.arange(len(y))))
  grid = os.path.join(out, 'overfit_predictions.png')
  plots.grid(grid, list(x), [f'row {r}: label {t} pred {p} ({probabilities[i, p]:.2f})'
                             for i, (r, t, p) in enumerate(zip(dataset.train_rows, y, predicted))],
             columns=4)
  return verdict, curve, grid


def _input_grid(out, x, y, rows, limit=32):
  path = os.path.join(out, 'inputs_before_net.png')
  plots.grid(path, list(x[:limit]), [f'row {r} {_label_text(label)}'
                                      for r, label in zip(rows, y[:limit])], columns=8)
  return path


def _label_text(label) -> str:
  """'y=3', or for a mixed example's soft target its classes and weights: '3:0.72 5:0.28'."""
  label = np.asarray(label)
  if label.ndim == 0:
    return f'y={label}'
  top = [c for c in np.argsort(-label)[:2] if label[c] > 0.005]
  return ' '.join(f'{c}:{label[c]:.2f}' for c in top)


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


MAX_HISTOGRAM_PANELS = 16


def _activation_histograms(out, at_init, after, order, program):
  """Per layer (evenly chosen, at most MAX_HISTOGRAM_PANELS): what enters it, at init and
  after the short run, titled with the nonlinearity the program applies before it and the
  dead or saturated share of that nonlinearity's units at init."""
  if not order:
    return None
  shown = [order[i] for i in sorted(set(np.linspace(0, len(order) - 1, MAX_HISTOGRAM_PANELS)
                                        .round().astype(int)))]
  inputs = program.layer_inputs if program is not None else {}
  judged_as = {s.name: s.judged for s in program.sites} if program is not None else {}
  panels = []
  for layer in shown:
    series = {}
    for label, measured in (('init', at_init), ('after the short run', after)):
      if measured is not None and layer in measured['activations']:
        a = measured['activations'][layer]['input']
        series[label] = (a['histogram'], float(a['min']), float(a['max']))
    read = inputs.get(layer, {})
    kind = read.get('kind', '?')
    if read.get('through'):
      kind += f' ({", ".join(read["through"])})'
    notes = []
    for site in read.get('sites', []):
      stats, judged = at_init.get('sites', {}).get(site), judged_as.get(site)
      if stats is not None and judged:
        share = stats['dead_fraction' if judged == 'dead' else 'saturated_fraction']
        notes.append(f"{judged if judged == 'dead' else 'saturated'} {float(share):.0%}")
    panels.append((f'{layer} <- {kind}' + (f', {", ".join(notes)}' if notes else ''), series))
  path = os.path.join(out, 'layer_activations.png')
  plots.layer_histograms(path, panels)
  return path


def _gradient_norms(out, verdict):
  evidence = verdict.evidence
  series = {label: evidence[key] for label, key in (('init', 'grad_norm_init'),
                                                     ('after the short run', 'grad_norm_after'))
            if key in evidence}
  if not series:
    return None
  path = os.path.join(out, 'gradient_norms.png')
  plots.per_layer(path, series, evidence['layers'], 'kernel gradient norm')
  return path


def _update_ratio_plot(out, steps_done, series):
  if not steps_done:
    return None
  path = os.path.join(out, 'update_ratios.png')
  shown = list(series)[:24]  # first to last layer, in colour order
  plots.curves(path, {layer: (steps_done, np.maximum(series[layer], 1e-12)) for layer in shown},
               'step', '|update| / |weights| per step', logy=True,
               hlines={f'rule of thumb {diagnosis.HEALTHY_UPDATE_RATIO:g}':
                       diagnosis.HEALTHY_UPDATE_RATIO})
  return path
