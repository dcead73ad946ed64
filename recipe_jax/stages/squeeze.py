"""stage='squeeze': squeeze out the juice (recipe step 6).

Members (`squeeze.members`): `seeds:N` (N seeds of this config, trained in
squeeze/members/seed_<s>/ as normal train runs: a killed squeeze resumes them and finished ones
are reused), `tune:DIR` (the `squeeze.top_k` best finished trials of the tune stage in DIR), or
comma-separated run directories. Then, on validation (selection) and test (reported only):

- the ensemble (mean of the members' probabilities) against each member, the mean member and
  the best member, and its gain as members are added (ensemble_gain.png);
- weight averaging of the best member: `squeeze.swa_steps` more steps at a constant
  `squeeze.swa_learning_rate`, SWA of a snapshot every `squeeze.swa_every` steps and an EMA,
  both with BatchNorm statistics recomputed on the training split;
- test-time augmentation of the best member (`squeeze.tta_copies` draws of its configured
  augmentation), when it trains with augmentation;
- distillation (`squeeze.student`, JSON overrides such as '{"model.width": 8}'): the student
  trained on the ensemble's probabilities softened at `squeeze.temperature`, against the same
  student trained on labels alone, with parameter counts and inference time per example;
- the error analysis of the ensemble on validation (squeeze/analysis/, `recipe_jax.diagnose.analysis`).
"""
import os
import time

import jax
import numpy as np
from absl import logging

from recipe_jax import console, files
from recipe_jax.config import check as config_check
from recipe_jax.diagnose import ensembles, saturation, weight_averaging
from recipe_jax.engine import experiment, loop
from recipe_jax.runs import side_by_side
from recipe_jax.report import error_analysis, plots, results as report, tables
from recipe_jax.runs import driver, store as run_store, finished as runs
from recipe_jax.errors import UserError
from recipe_jax.verdicts import StageResult, Verdict
from recipe_jax.engine import evaluate

FILES = ['squeeze/results.md', 'squeeze/results.csv', 'squeeze/ensemble_gain.png',
         'squeeze/analysis/confusion_matrix.png', 'squeeze/report.md']
COLUMNS = ('val_accuracy', 'val_loss', 'val_ece', 'test_accuracy', 'test_loss', 'test_ece',
           'params', 'us_per_example')


def member_runs(config, out: str) -> list:
  """[(name, run_dir, config to train it with, or None for an existing run)]."""
  spec = config.squeeze.members.strip()
  if spec.startswith('seeds:'):
    count = int(spec[len('seeds:'):])
    return [(f'seed_{s}', os.path.join(out, 'members', f'seed_{s}'),
             config_check.variant(config, {}, s))
            for s in range(config.seed, config.seed + count)]
  if spec.startswith('tune:'):
    tune_dir = spec[len('tune:'):]
    return [(os.path.basename(d), d, None) for d in runs.best_trials(
        tune_dir, config.squeeze.top_k, config.tune.metric, f'squeeze.members=tune:{tune_dir}')]
  run_dirs = [d.strip() for d in spec.split(',') if d.strip()]
  return [(os.path.basename(os.path.normpath(d)), d, None) for d in run_dirs]


def _with_data_dir(member_config, config):
  if config.dataset.data_dir:
    member_config.dataset.data_dir = config.dataset.data_dir
  return member_config


def train_members(config, members: list) -> bool:
  """Trains the members that are not finished; False when preempted (a restart resumes)."""
  progress = console.StageProgress('squeeze', len(members), 'members')
  configs = [member_config for _, _, member_config in members]
  if None not in configs and not side_by_side.train_unfinished(
      configs, [run_dir for _, run_dir, _ in members]):
    return False
  for number, (name, run_dir, member_config) in enumerate(members, 1):
    if (run_store.reusable_summary(run_dir, member_config) if member_config
        else runs.finished_summary(run_dir)):
      logging.info('squeeze: member %s already finished, reused', name)
      continue
    if member_config is None:
      raise UserError(f'squeeze member {run_dir} has not finished training; finish it '
                      '(rerun its train command) or leave it out')
    logging.info('squeeze: training member %s', name)
    if not driver.run_training(member_config, run_dir)['finished']:
      return False
    progress.done(number)
  return True


def microseconds_per_example(exp, state, x: np.ndarray, repeats: int = 5) -> float:
  """Inference time per example: the median of `repeats` passes over x (the typical pass,
  not the luckiest), after one that compiles."""
  evaluate.probabilities(exp, state, x)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    evaluate.probabilities(exp, state, x)
    times.append(time.perf_counter() - start)
  return 1e6 * float(np.median(times)) / len(x)


def count_params(params) -> int:
  return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def row(name: str, val_probs, test_probs, dataset, bins: int, **extra) -> dict:
  found = {'name': name}
  for split, probs, labels in (('val', val_probs, dataset.y_val),
                               ('test', test_probs, dataset.y_test)):
    found.update({f'{split}_{k}': v for k, v in ensembles.scores(probs, labels, bins).items()})
  return {**found, **extra}


def run(config, workdir: str) -> StageResult:
  out = os.path.join(workdir, 'squeeze')
  members = member_runs(config, out)
  student_overrides = config_check.decoded(config, 'squeeze.student')
  if not train_members(config, members):
    return StageResult('squeeze', [], {}, FILES, finished=False)
  loaded = [_load_member(config, name, run_dir) for name, run_dir, _ in members]
  dataset = loaded[0]['exp'].dataset
  for member in loaded[1:]:
    if not np.array_equal(member['exp'].dataset.y_val, dataset.y_val):
      raise UserError(f"squeeze member {member['name']} was trained on other data (its "
                      'validation split differs); ensemble runs of one dataset')
  bins = config.analysis.calibration_bins
  rows = [row(m['name'], m['val'], m['test'], dataset, bins, params=m['params'],
              us_per_example=m['us']) for m in loaded]
  best = loaded[int(np.argmax([r['val_accuracy'] for r in rows]))]
  mean_row = {'name': 'mean member', **{k: float(np.mean([r[k] for r in rows]))
                                        for k in COLUMNS}}
  best_row = {**rows[loaded.index(best)], 'name': f"best member ({best['name']})"}
  ensemble_val = ensembles.average([m['val'] for m in loaded])
  ensemble_test = ensembles.average([m['test'] for m in loaded])
  ensemble_row = row(f'ensemble of {len(loaded)}', ensemble_val, ensemble_test, dataset, bins,
                     params=sum(m['params'] for m in loaded),
                     us_per_example=sum(m['us'] for m in loaded))
  table = rows + [mean_row, best_row, ensemble_row]
  found = [_ensemble_verdict(ensemble_row, mean_row, best_row),
           saturation.verdict(dataset.y_test, {ensemble_row['name']: ensemble_test.argmax(-1),
                                               best_row['name']: best['test'].argmax(-1)})]
  images = {'ensemble': [_gain_plot(out, loaded, dataset)]}
  # Where is the final model (the ensemble) still confused? On validation, as for a train run.
  confused, pictures = error_analysis.write(os.path.join(out, 'analysis'), ensemble_val,
                                            dataset.y_val, dataset.x_val, config.analysis,
                                            dataset, 'val')
  found += [v for v in confused if v.check != 'still_improving']
  images.update(pictures)
  squeeze = config.squeeze
  title = f'Squeeze: {config.model.name} on {config.dataset.name}'
  try:  # each step below appends its rows and verdict: a Ctrl-C keeps those done
    if squeeze.swa_steps > 0:
      averaged = _weight_averaging_rows(best, squeeze, dataset, bins)
      table += averaged
      found.append(_relative_verdict('weight_averaging', averaged, best_row, squeeze.tolerance))
    if squeeze.tta_copies > 0 and best['exp'].augmentation is not None:
      exp, state = best['exp'], best['state']
      tta = row(f"best member + TTA x{squeeze.tta_copies}",
                ensembles.tta_probs(exp, state, dataset.x_val, squeeze.tta_copies),
                ensembles.tta_probs(exp, state, dataset.x_test, squeeze.tta_copies), dataset,
                bins, key='tta', params=best['params'],
                us_per_example=best['us'] * (squeeze.tta_copies + 1))
      table.append(tta)
      found.append(_relative_verdict('tta', [tta], best_row, squeeze.tolerance))
    if student_overrides is not None:
      students = _distill(config, out, loaded, student_overrides, bins)
      if students is None:
        return StageResult('squeeze', [], {}, FILES, finished=False)
      table += students
      found.append(_distillation_verdict(*students, ensemble_row))
  except KeyboardInterrupt:
    loop.interrupted()
    _write_tables(out, table)
    return report.finish(workdir, StageResult('squeeze', found, {}, FILES, finished=False),
                         title, images)
  _write_tables(out, table)
  metrics = {'ensemble_test_accuracy': ensemble_row['test_accuracy'],
             'mean_member_test_accuracy': mean_row['test_accuracy'],
             'best_member_test_accuracy': best_row['test_accuracy'],
             'members': len(loaded)}
  metrics.update({f"{r['key']}_test_accuracy": r['test_accuracy'] for r in table if 'key' in r})
  return report.finish(workdir, StageResult('squeeze', found, metrics, FILES), title, images)


def _load_member(config, name: str, run_dir: str) -> dict:
  exp = experiment.build(_with_data_dir(runs.load_config(run_dir), config))
  state = runs.restore_final_state(exp, run_dir)
  dataset = exp.dataset
  return {'name': name, 'exp': exp, 'state': state, 'run_dir': run_dir,
          'val': evaluate.probabilities(exp, state, dataset.x_val),
          'test': evaluate.probabilities(exp, state, dataset.x_test),
          'params': count_params(state.params),
          'us': microseconds_per_example(exp, state, dataset.x_test)}


def _weight_averaging_rows(best: dict, squeeze, dataset, bins: int) -> list:
  exp = best['exp']
  lr = squeeze.swa_learning_rate or exp.config.optimizer.learning_rate / 10
  logging.info('squeeze: SWA and EMA of %s, %d steps at learning rate %g', best['name'],
               squeeze.swa_steps, lr)
  swa, ema = weight_averaging.continue_and_average(
      exp, best['state'], steps=squeeze.swa_steps, every=squeeze.swa_every, learning_rate=lr,
      ema_decay=squeeze.ema_decay)
  return [row(name, evaluate.probabilities(exp, state, dataset.x_val, state.params),
              evaluate.probabilities(exp, state, dataset.x_test, state.params), dataset, bins,
              key=key, params=best['params'], us_per_example=best['us'])
          for key, name, state in (
              ('swa', f'SWA of best member ({squeeze.swa_steps} steps)', swa),
              ('ema', f'EMA {squeeze.ema_decay:g} of best member', ema))]


def _distill(config, out: str, loaded: list, overrides: dict, bins: int):
  """[student on labels, distilled student] rows, or None when preempted."""
  student_config = config_check.variant(config, overrides)
  exp = experiment.build(student_config)
  teacher = ensembles.average([evaluate.probabilities(m['exp'], m['state'], exp.dataset.x_train)
                               for m in loaded])
  found = []
  for key, name, student in (
      ('student_on_labels', 'student on labels', exp),
      ('student_distilled', f'student distilled (T={config.squeeze.temperature:g})',
       ensembles.student_experiment(exp, teacher, config.squeeze.temperature))):
    run_dir = os.path.join(out, key)
    if not run_store.reusable_summary(run_dir, student_config):
      logging.info('squeeze: training the %s', name)
      if not driver.run_training(student_config, run_dir, exp=student)['finished']:
        return None
    state = runs.restore_final_state(exp, run_dir)
    found.append(row(name, evaluate.probabilities(exp, state, exp.dataset.x_val),
                     evaluate.probabilities(exp, state, exp.dataset.x_test), exp.dataset, bins,
                     params=count_params(state.params),
                     us_per_example=microseconds_per_example(exp, state, exp.dataset.x_test),
                     key=key))
  return found


def _ensemble_verdict(ensemble_row, mean_row, best_row) -> Verdict:
  gain = ensemble_row['val_accuracy'] - mean_row['val_accuracy']
  line = (f"ensemble val accuracy {ensemble_row['val_accuracy']:.4f} vs mean member "
          f"{mean_row['val_accuracy']:.4f} ({gain:+.4f}), best member "
          f"{best_row['val_accuracy']:.4f}; test {ensemble_row['test_accuracy']:.4f} vs "
          f"{mean_row['test_accuracy']:.4f}")
  evidence = {'ensemble': ensemble_row, 'mean_member': mean_row, 'best_member': best_row}
  if gain < 0:
    return Verdict('ensemble', 'WARN', line + ': the ensemble is worse than its average member '
                   '(a broken member? look at each row)', evidence)
  return Verdict('ensemble', 'PASS', line, evidence)


def _relative_verdict(check: str, rows: list, best_row: dict, tolerance: float) -> Verdict:
  """WARN when a variant of the best member loses more than `tolerance` validation accuracy."""
  words = '; '.join(f"{r['name']}: val {r['val_accuracy']:.4f}, test {r['test_accuracy']:.4f}"
                    for r in rows)
  worse = [r['name'] for r in rows
           if r['val_accuracy'] < best_row['val_accuracy'] - tolerance]
  line = f"{words} (best member: val {best_row['val_accuracy']:.4f})"
  evidence = {'rows': rows, 'best_member': best_row, 'tolerance': tolerance}
  if worse:
    return Verdict(check, 'WARN', f'{line}: {", ".join(worse)} lost more than {tolerance:g} '
                   'validation accuracy (for SWA: a lower squeeze.swa_learning_rate)', evidence)
  return Verdict(check, 'PASS', line, evidence)


def _distillation_verdict(labels_row, distilled_row, ensemble_row) -> Verdict:
  gain = distilled_row['val_accuracy'] - labels_row['val_accuracy']
  line = (f"distilled student val {distilled_row['val_accuracy']:.4f} vs on labels "
          f"{labels_row['val_accuracy']:.4f} ({gain:+.4f}), ensemble "
          f"{ensemble_row['val_accuracy']:.4f}; {distilled_row['params']} parameters vs "
          f"{ensemble_row['params']}, {distilled_row['us_per_example']:.1f} vs "
          f"{ensemble_row['us_per_example']:.1f} us per example")
  evidence = {'student_on_labels': labels_row, 'distilled': distilled_row}
  if gain < 0:
    return Verdict('distillation', 'WARN', line + ': the teacher did not help (try another '
                   'squeeze.temperature, or a larger student)', evidence)
  return Verdict('distillation', 'PASS', line, evidence)


def _gain_plot(out: str, loaded: list, dataset) -> str:
  """Accuracy of the ensemble of the first k members, against the mean single member."""
  sizes = range(1, len(loaded) + 1)
  series, means = {}, {}
  for split, labels in (('val', dataset.y_val), ('test', dataset.y_test)):
    series[f'ensemble ({split})'] = (list(sizes), [
        ensembles.scores(ensembles.average([m[split] for m in loaded[:k]]), labels)['accuracy']
        for k in sizes])
    means[f'mean member ({split})'] = float(np.mean(
        [ensembles.scores(m[split], labels)['accuracy'] for m in loaded]))
  path = os.path.join(out, 'ensemble_gain.png')
  plots.curves(path, series, 'members in the ensemble (in member order)', 'accuracy',
               hlines=means, integer_x=True)
  return path


def _write_tables(out: str, table: list) -> None:
  tables.write_csv(os.path.join(out, 'results.csv'), table, ['name', *COLUMNS])
  lines = tables.markdown(['model', *COLUMNS],
                          [[r['name'], *(_cell(r.get(k)) for k in COLUMNS)] for r in table])
  files.write_text(os.path.join(out, 'results.md'), '\n'.join(lines) + '\n')


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float) and value > 100:
    return f'{value:.0f}'
  if isinstance(value, float) and value > 1:  # microseconds
    return f'{value:.1f}'
  return f'{value:.4f}' if isinstance(value, float) else str(value)
