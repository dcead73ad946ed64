"""Training runs for every stage: one run (`run_training`, trained or resumed in its workdir,
tracked, its summary.json written), and the many runs of a multi-run stage (`train_groups`:
compare's variants, replicate's seeds and keys, scale_up's groups, data_scaling's fractions),
each trained or reused when it finished before, seeds side by side where that is on.
"""
import os

from absl import logging

from recipe_jax import console, files
from recipe_jax.diagnose import monitor
from recipe_jax.engine import experiment, training
from recipe_jax import multihost
from recipe_jax.runs import side_by_side
from recipe_jax.errors import DivergenceError
from recipe_jax import words
from recipe_jax.runs import store as run_store, tracking


def write_json(path: str, obj) -> None:
  if multihost.is_leader():
    files.write_json(path, obj)  # whole or not at all


def run_training(config, workdir: str, on_eval=None, exp=None, claim: bool = True) -> dict:
  """Trains (or resumes) the run in workdir and returns its summary (summary.json). A workdir
  that holds a run of another config is refused before anything is written (`run_store`);
  `claim=False`: a stage claimed it already, for this run."""
  if claim:
    run_store.claim(workdir, config)
  with tracking.tracked(config, workdir) as tracked_run:
    def after_eval(step, row):
      if tracked_run:
        tracked_run.log_evals([row])
      if on_eval:
        on_eval(step, row)
    exp = exp or experiment.build(config)
    watch = None
    if config.monitor_layers and config.eval_every_steps > 0:
      watch = lambda writer: monitor.LayerMonitor(exp, writer, config.eval_every_steps,
                                                  config.sanity.max_gradient_ratio)
    summary = training.train_and_evaluate(exp, workdir, after_eval, watch)
    write_json(os.path.join(workdir, 'summary.json'), summary)
    if tracked_run:  # evals of a run trained side by side, or none left to log
      tracked_run.log_evals(summary['history'])
      if not summary['finished']:
        tracked_run.status = 'KILLED'
  console.run_ended(workdir, words.headline(
      {k: summary[k] for k in ('eval_accuracy', 'test_accuracy', 'step', 'wall_s')
       if summary.get(k) is not None}))
  return summary


def train_runs(stage: str, configs: list, run_dirs: list, progress=None,
               before: int = 0) -> list | None:
  """The summaries of these runs (compare's seeds, replicate's, scale_up's), training those not
  finished yet (seeds side by side where that is on) and reusing the others; None when one was
  preempted (the same command resumes it). `progress` counts `before` runs done already."""
  if not side_by_side.train_unfinished(configs, run_dirs):
    return None
  found = []
  for config, run_dir in zip(configs, run_dirs):
    summary = run_store.reusable_summary(run_dir, config)
    trained = summary is None
    if trained:
      logging.info('%s: training %s, seed %d', stage, run_dir, config.seed)
      summary = run_training(config, run_dir)
      if not summary['finished']:
        return None
    else:
      logging.info('%s: %s already finished, not redone', stage, run_dir)
    found.append(summary)
    if progress:
      progress.done(before + len(found), trained)
  return found


def train_groups(stage: str, groups: dict, diverged: dict | None = None,
                 fatal: tuple = ()) -> dict | None:
  """The multi-run stages' loop: {group: [summary, ...]} for `groups` ({group: [(configs,
  run_dirs), ...]}: each group one or more batches, trained or reused in turn by `train_runs`),
  with one progress line over all runs; None when a run was preempted (the same command resumes
  it). With `diverged` (a dict), a group whose run diverges is left out and its error kept
  there, unless the group is `fatal`; without it, a divergence stops the stage."""
  total = sum(len(run_dirs) for batches in groups.values() for _, run_dirs in batches)
  progress = console.StageProgress(stage, total)
  summaries, done = {}, 0
  for name, batches in groups.items():
    found = []
    try:
      for configs, run_dirs in batches:
        trained = train_runs(stage, configs, run_dirs, progress, done + len(found))
        if trained is None:
          return None
        found += trained
    except DivergenceError as e:
      if diverged is None or name in fatal:
        raise
      diverged[name] = str(e)
      done += len(found)
      continue
    summaries[name], done = found, done + len(found)
  return summaries
