"""stage='replicate': is a finished run's result its config's, or its seed's luck? (recipe step 5)

`--config.replicate.run_dir=RUN` (a finished train run). Trains RUN's exact config again, on its
own seed (is the result reproduced?) and on `replicate.seeds` other seeds, then on the same seeds
with each change in `replicate.perturbations` (JSON {"config.key": ["/1.5", "x1.5"]}). Runs in
replicate/seed_<n>/ and replicate/<change>/seed_<n>/ (a restart resumes, finished runs are
reused). Verdicts: `reproduced` (and what changed when it is not), `seed_position` (where the
original sits in the seeds' spread: a WARN for a lucky or an unlucky seed) and one
`sensitive_<key>` per perturbed key (a change beyond noise). Output: replicate/results.{md,csv},
replicate/spread.png.
"""
import os
import re

import numpy as np

from recipe_jax import files
from recipe_jax.config import check as config_check, selection
from recipe_jax.data import sources
from recipe_jax.diagnose import noise, replication
from recipe_jax.errors import UserError
from recipe_jax.report import plots, results as report, tables
from recipe_jax import words
from recipe_jax.verdicts import StageResult, Verdict
from recipe_jax.runs import driver, finished as runs, provenance

FILES = ['replicate/results.md', 'replicate/results.csv', 'replicate/spread.png',
         'replicate/report.md']
SEEDS = 'seeds'  # the group of the unchanged config


def finished_train_run(run_dir: str, key: str) -> tuple:
  """(config, summary) of a finished train run; a one-line UserError for anything else."""
  config = runs.load_config(run_dir)
  if config.stage != 'train':
    raise UserError(f'{key}={run_dir} holds a {config.stage} stage, not a train run; give the '
                    '--workdir of a train run (or one of compare/<variant>/seed_<n>/)')
  summary = runs.finished_summary(run_dir)
  if summary is None:
    raise UserError(f'{key}={run_dir} has not finished (no finished summary.json); let it '
                    'finish (the same command resumes it), then replicate it')
  return config, summary


def groups(config, original) -> dict:
  """{group name: (folder, {key: value})}: the unchanged config, then each perturbation."""
  found = {SEEDS: ('', {})}
  for key, changes in config_check.decoded(config, 'replicate.perturbations').items():
    value = config_check.run_value(original, key)
    for change in changes:
      folder = re.sub(r'[^\w.=-]', '_', config_check.change_name(key, change).replace(
          ' /', '_div').replace(' x', '_x'))
      found[config_check.change_name(key, change)] = (
          folder, {key: config_check.changed(key, value, change)})
  return found


def run(config, workdir: str) -> StageResult:
  run_dir, cfg = config.replicate.run_dir, config.replicate
  original, recorded = finished_train_run(run_dir, 'replicate.run_dir')
  if config.dataset.data_dir:
    original.dataset.data_dir = config.dataset.data_dir
  if cfg.metric not in recorded:
    raise UserError(f'replicate.metric={cfg.metric}: {run_dir}/summary.json has no such value')
  out = os.path.join(workdir, 'replicate')
  seeds = [original.seed, *range(original.seed + 1, original.seed + 1 + cfg.seeds)]
  planned = groups(config, original)
  configs = {}  # every run's config checked before the first one trains
  for name, (folder, overrides) in planned.items():
    try:
      configs[name] = [config_check.variant(original, overrides, s) for s in seeds]
    except UserError as e:
      raise UserError(f'replicate.perturbations: {name} makes a config that cannot run: '
                      f'{e}') from None
  batched = {}
  for name, (folder, _) in planned.items():
    run_dirs = [os.path.join(out, folder, f'seed_{s}') for s in seeds]
    # the run's own seed trains alone, as the run did: seeds side by side (GPU, TPU) would
    # reassociate its floats and look like a change
    batches = ([0], list(range(1, len(seeds)))) if name == SEEDS else (range(len(seeds)),)
    batched[name] = [([configs[name][i] for i in b], [run_dirs[i] for i in b]) for b in batches]
  diverged = {}  # the run's own config diverging on another seed is the answer: it raises
  summaries = driver.train_groups('replicate', batched, diverged, fatal=(SEEDS,))
  if summaries is None:  # preempted: the same command resumes here
    return StageResult('replicate', [], {}, FILES, finished=False)
  return finish(config, workdir, original, recorded, summaries, planned, diverged)


def finish(config, workdir, original, recorded, summaries, planned, diverged) -> StageResult:
  cfg, metric, out = config.replicate, config.replicate.metric, os.path.join(workdir, 'replicate')
  again = summaries[SEEDS][0][metric]
  others = [s[metric] for s in summaries[SEEDS][1:]]
  reproduced = replication.reproduction(recorded[metric], again, metric, original.seed,
                                        changes_since(cfg.run_dir, original))
  position = replication.seed_position(recorded[metric], others, metric, cfg.interval,
                                       recorded.get('val_examples'), original.seed,
                                       reproduced.status == 'PASS')
  found = [reproduced, position]
  rows = noise.group_rows({noise.BASELINE if n == SEEDS else n: s for n, s in summaries.items()},
                          {noise.BASELINE if n == SEEDS else n: o
                           for n, (_, o) in planned.items()}, metric)
  rows[0]['variant'] = SEEDS
  found += sensitivity(rows, metric, diverged)
  tables.write_csv(os.path.join(out, 'results.csv'), rows)
  _write_table(os.path.join(out, 'results.md'), rows, metric, recorded[metric], original.seed)
  image = os.path.join(out, 'spread.png')
  low, high = position.evidence.get('interval', (recorded[metric], recorded[metric]))  # NaN: none
  plots.spread(image, {n: [s[metric] for s in group] for n, group in summaries.items()},
               words.metric_name(metric), (f'the run (seed {original.seed})', recorded[metric]),
               (f'one more seed, {cfg.interval:.0%} of the time', low, high))
  test = [s['test_accuracy'] for s in summaries[SEEDS][1:] if s.get('test_accuracy') is not None]
  metrics = {f'{metric}_mean': float(np.mean(others)),
             f'{metric}_std': float(np.std(others, ddof=1)),
             f'original_{metric}': recorded[metric], 'reproduced': reproduced.status == 'PASS',
             'sensitive': [v.check[len('sensitive_'):] for v in found
                           if v.check.startswith('sensitive_') and v.status == 'WARN']}
  if test:  # reported, never used to select
    metrics.update(test_accuracy_mean=float(np.mean(test)), test_accuracy_std=float(
        np.std(test, ddof=1)) if len(test) > 1 else 0.0)
  return report.finish(workdir, StageResult('replicate', found, metrics, FILES),
                       f'Replicate: {cfg.run_dir}',
                       {'seed_position': [image]})


def changes_since(run_dir: str, config) -> list[str]:
  """What differs now from what the run recorded when it started, the likeliest cause first:
  the data (its data.json), the code and versions (its provenance), the devices, the host."""
  found = []
  data_path = files.join(run_dir, 'data.json')
  if files.exists(data_path) and files.read_json(data_path) != sources.identity(config.dataset):
    found.append(f'the data: {config.dataset.name} is not the file the run trained on')
  record_path = files.join(run_dir, provenance.FILE)
  if files.exists(record_path):
    before = files.read_json(record_path)
    now = provenance.collect(config)
    latest = (before.get('restarts') or [before])[-1]
    found += provenance.differences(provenance.identity(latest), provenance.identity(now))
    if before.get('restarts'):
      found.append(f"the run itself was restarted on other code ({len(before['restarts'])} "
                   'time(s)): its result mixes the two')
    for what in ('devices', 'host'):
      if latest.get(what) != now.get(what):
        found.append(f'{what} {latest.get(what)} -> {now.get(what)}')
  return found


def sensitivity(rows: list, metric: str, diverged: dict | None = None) -> list:
  """One verdict per perturbed key: WARN when a change moves the metric beyond noise, or makes
  training diverge (`diverged`: {change: why})."""
  key_of = lambda name: name.split(' ')[0].split('=')[0]
  by_key, diverged = {}, diverged or {}
  for row in rows[1:]:
    by_key.setdefault(key_of(row['variant']), []).append(row)
  for name in diverged:
    by_key.setdefault(key_of(name), [])
  found = []
  for key, key_rows in by_key.items():
    moved = [r for r in key_rows if r['noise'] == 'beyond noise']
    blew_up = {name: why for name, why in diverged.items() if key_of(name) == key}
    parts = [f"{r['variant'][len(key):].strip(' =')} {r['delta']:+.4f}" for r in key_rows]
    parts += [f"{name[len(key):].strip(' =')} diverged ({why})" for name, why in blew_up.items()]
    noise = max((r['noise_level'] for r in key_rows), default=float('nan'))
    evidence = {r['variant']: {k: r[k] for k in ('mean', 'std', 'delta', 'noise', 'noise_level')}
                for r in key_rows}
    evidence.update({name: {'diverged': why} for name, why in blew_up.items()})
    if not moved and not blew_up:
      found.append(Verdict(f'sensitive_{key}', 'PASS', f'{key}: {", ".join(parts)} in '
                           f'{words.metric_name(metric)}, inside the noise (+-{noise:.4f}): the '
                           'result does not hinge on it', evidence))
      continue
    better = [r for r in moved if selection.sign(metric) * r['delta'] > 0]
    advice = (f"; {better[0]['variant']} is better: the config is not at its best for {key}"
              if better else '; keep it where it is, and tune it with care')
    found.append(Verdict(f'sensitive_{key}', 'WARN', f'the result is sensitive to {key}: '
                         f'{", ".join(parts)} in {words.metric_name(metric)}, '
                         f'{len(moved)} beyond the noise (+-{noise:.4f}){advice}', evidence))
  return found


def _write_table(path: str, rows: list, metric: str, original: float, seed: int) -> None:
  cells = []
  for r in rows:
    delta = '' if r['variant'] == SEEDS else f"{r['delta']:+.4f}"
    test = '' if r['test_accuracy'] is None or r['test_accuracy'] != r['test_accuracy'] else (
        f"{r['test_accuracy']:.4f}")
    cells.append([r['variant'], r['seeds'], f"{r['mean']:.4f} +- {r['std']:.4f}", delta,
                  r['noise'] or '-', test])
  lines = [f'# Replicate: {metric}, mean +- std over seeds', '',
           f'The run itself (seed {seed}): {original:.4f}', '',
           *tables.markdown(['runs', 'seeds', metric, 'delta vs the config', 'beyond the noise?',
                             'test accuracy'], cells),
           '', '![spread over seeds](spread.png)', '']
  files.write_text(path, '\n'.join(lines))
