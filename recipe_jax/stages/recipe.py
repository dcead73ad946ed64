"""stage='recipe': the whole recipe in one workdir, stage after stage, gated and resumable.

`recipe.stages` (default inspect, sanity, lr_find, overfit, compare, tune, squeeze; add
data_scaling where wanted) run in order, each with DIR/<stage>/ as its workdir. Findings are
handed on: lr_find's suggested learning rate to every later stage (unless
`recipe.pin_learning_rate`), compare's best variant (when it beats the baseline beyond seed noise)
to tune, tune's best trial to squeeze. `recipe.overrides` (JSON {"stage": {"key": value}}) sets
keys for one stage only.

A FAIL in inspect or sanity stops the recipe (exit 1) unless `recipe.continue_on_fail`; WARNs
never stop it. A restart skips finished stages (their result.json), resumes an unfinished one
from its checkpoints, and DIR/report.html is rewritten after every stage. A stage run alone
(`recipe.stages=squeeze`) still gets what the earlier stages in DIR found.
"""
import importlib
import os
import time

from absl import logging

from recipe_jax import config_check, console, html_report, report
from recipe_jax.errors import ChecksFailed
from recipe_jax.report import StageResult, Verdict

STAGES = config_check.RECIPE_STAGES
GATED = ('inspect', 'sanity')


def selected_stages(config) -> list:
  """recipe.stages in the recipe's order (the config check made sure they are known)."""
  return sorted(config_check.recipe_stage_names(config.recipe.stages), key=STAGES.index)


def stage_config(config, stage: str, handed_on: dict, overrides: dict):
  """The config a stage runs with: the recipe's, what earlier stages found, its own keys."""
  found = config_check.variant(config, {**handed_on, **overrides.get(stage, {})})
  found.stage = stage
  return found


def run(config, workdir: str) -> StageResult:
  stages, overrides = selected_stages(config), config_check.decoded(config, 'recipe.overrides')
  for stage in stages:  # every stage's config checked before the first one runs
    stage_config(config, stage, {}, overrides)
  handed_on, found = {}, []
  for stage in STAGES[:STAGES.index(stages[-1]) + 1]:
    stage_dir = os.path.join(workdir, stage)
    if stage not in stages:  # not selected: what it found earlier in this workdir still goes on
      earlier = _finished_result(stage, stage_dir)
      if earlier:
        handed_on.update(hand_on(stage, earlier, config)[0])
      continue
    result = _run_or_reuse(stage_config(config, stage, handed_on, overrides), stage, stage_dir)
    html_report.write(workdir)
    if not result.finished:  # SIGTERM: checkpointed; the same command continues here
      return _finish(workdir, found, finished=False)
    handed, note = hand_on(stage, result, config)
    handed_on.update(handed)
    found.append(_stage_verdict(result, note))
    if note:
      logging.info('recipe: %s', note)
    failed = [v.check for v in result.verdicts if v.status == 'FAIL']
    if stage in GATED and failed and not config.recipe.continue_on_fail:
      _finish(workdir, found)
      raise ChecksFailed(f'recipe stopped after {stage}: {", ".join(failed)} FAILed; see '
                         f'{os.path.join(stage_dir, stage, "report.md")} and fix it first (or '
                         '--config.recipe.continue_on_fail=True to go on anyway)')
  return _finish(workdir, found)


def _finished_result(stage: str, stage_dir: str) -> StageResult | None:
  path = os.path.join(stage_dir, stage, 'result.json')
  if os.path.exists(path):
    result = report.read_result(path)
    if result.finished:
      return result
  return None


def _run_or_reuse(config, stage: str, stage_dir: str) -> StageResult:
  result = _finished_result(stage, stage_dir)
  if result:
    logging.info('recipe: %s already finished (%s), not rerun', stage, _counts(result))
    return result
  logging.info('recipe: %s starts', stage)
  start = time.time()
  module = importlib.import_module(f'recipe_jax.stages.{stage}')
  result = module.run(config, stage_dir)
  logging.info('recipe: %s %s in %s: %s', stage, 'done' if result.finished else 'stopped',
               console.format_seconds(time.time() - start), _counts(result))
  return result


def hand_on(stage: str, result: StageResult, config) -> tuple:
  """({config key: value} for the stages after this one, a sentence for the report)."""
  if stage == 'lr_find' and not config.recipe.pin_learning_rate:
    lr = result.metrics.get('suggestion')
    if lr:
      return ({'optimizer.learning_rate': lr},
              f'lr_find suggests learning rate {lr:.3g}: the stages after it use it')
  if stage == 'compare':
    best = result.metrics.get('best_variant')
    beats = [v for v in result.verdicts if v.check == f'variant_{best}' and v.status == 'PASS']
    if beats:
      chosen = config_check.decoded(config, 'compare.variants')[best]
      return chosen, f'compare: variant {best} beats the baseline beyond seed noise: {chosen}'
    return {}, (f'compare: no variant beats the baseline beyond seed noise (best: {best}); the '
                'baseline goes on')
  if stage == 'tune' and result.metrics.get('best_params'):
    params = result.metrics['best_params']
    return params, f"tune: best trial {result.metrics['best_trial']} goes on: {params}"
  return {}, None


def _stage_verdict(result: StageResult, handed_on: str | None) -> Verdict:
  """The stage's worst status, its counts, the checks that did not PASS, what it handed on."""
  counts = result.counts()
  status = 'FAIL' if counts['FAIL'] else 'WARN' if counts['WARN'] else 'PASS'
  failed = [v.check for v in result.verdicts if v.status != 'PASS']
  summary = _counts(result) + (f" ({', '.join(failed)})" if failed else '')
  return Verdict(f'stage_{result.stage}', status, summary + (f'; {handed_on}' if handed_on
                                                             else ''),
                 {'counts': counts, 'metrics': result.metrics, 'handed_on': handed_on})


def _counts(result: StageResult) -> str:
  return ', '.join(f'{n} {s}' for s, n in result.counts().items())


def _finish(workdir: str, found: list, finished: bool = True) -> StageResult:
  result = StageResult('recipe', found, {'stages_finished': len(found)}, ['report.html'],
                       finished=finished)
  return report.finish(workdir, result, 'Recipe')  # which writes DIR/report.html too
