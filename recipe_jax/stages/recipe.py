"""stage='recipe': the whole recipe in one workdir, stage after stage, gated and resumable.

`recipe.stages` (default inspect, sanity, lr_find, overfit, compare, tune, squeeze; add
data_scaling where wanted) run in order in one workdir, each writing into DIR/<stage>/ (its
config and data recorded there: `run_store`). Findings are
handed on: lr_find's suggested learning rate to every later stage (unless
`recipe.pin_learning_rate`), compare's best variant (when it beats the baseline beyond noise)
to tune, tune's best trial to squeeze. `recipe.overrides` (JSON {"stage": {"key": value}}) sets
keys for one stage only.

A FAIL in inspect or sanity stops the recipe (exit 1) unless `recipe.continue_on_fail`; WARNs
never stop it. A restart skips finished stages (their result.json), resumes an unfinished one
from its checkpoints, and DIR/report.html is rewritten after every stage. A stage run alone
(`recipe.stages=squeeze`) still gets what the earlier stages in DIR found. A finished stage
whose config changed is refused, unless `recipe.rerun` names it (or an earlier stage whose new
finding changed it): then its folder is moved to DIR/<stage>.before-<time>/ and it runs again.
"""
import importlib
import time

from absl import logging

from recipe_jax import console, files
from recipe_jax.config import check as config_check
from recipe_jax.engine import loop
from recipe_jax.report import html as html_report, results as report
from recipe_jax.runs import store as run_store
from recipe_jax.errors import ChecksFailed, UserError
from recipe_jax import words
from recipe_jax.verdicts import StageResult, Verdict, read_result

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
  _refuse_the_old_layout(workdir)
  rerun = set(config_check.recipe_stage_names(config.recipe.rerun))
  handed_on, redone = {}, []
  for stage in STAGES[:STAGES.index(stages[-1]) + 1]:
    if stage not in stages:  # not selected: what it found earlier in this workdir still goes on
      earlier = _finished_result(workdir, stage)
      if earlier:
        handed_on.update(hand_on(stage, earlier, config)[0])
      continue
    stage_cfg = stage_config(config, stage, handed_on, overrides)
    if stage in rerun or (redone and _stale(workdir, stage, stage_cfg)):
      _move_aside(workdir, stage, 'asked to rerun' if stage in rerun else
                  f'its config changed with what {", ".join(redone)} found anew')
      redone.append(stage)
    try:
      result = _run_or_reuse(stage_cfg, stage, workdir)
    except KeyboardInterrupt:  # a stage that saves nothing more on Ctrl-C: the recipe's state
      loop.interrupted()
      html_report.write(workdir)
      return _finish(workdir, config, finished=False)
    html_report.write(workdir)
    if not result.finished:  # SIGTERM or Ctrl-C: saved; the same command continues here
      return _finish(workdir, config, finished=False)
    handed, note = hand_on(stage, result, config)
    handed_on.update(handed)
    if note:
      logging.info('recipe: %s', note)
    failed = [v.check for v in result.verdicts if v.status == 'FAIL']
    if stage in GATED and failed and not config.recipe.continue_on_fail:
      _finish(workdir, config)
      raise ChecksFailed(f'recipe stopped after {stage}: {", ".join(failed)} FAILed; see '
                         f'{files.join(workdir, stage, "report.md")} and fix it first (or '
                         '--config.recipe.continue_on_fail=True to go on anyway)')
  return _finish(workdir, config)


def _refuse_the_old_layout(workdir: str) -> None:
  """Workdirs of recipe_jax before 2026-11-28 nested each stage twice (DIR/lr_find/lr_find/):
  their report.html still reads, but the recipe does not mix the two layouts."""
  nested = [s for s in STAGES if files.exists(files.join(workdir, s, s, 'result.json'))]
  if nested:
    raise UserError(f'{workdir} has the older layout (stage folders nested twice: '
                    f'{files.join(workdir, nested[0], nested[0])}); its report.html still reads, '
                    'but run the recipe in a new --workdir')


def _stale(workdir: str, stage: str, config) -> bool:
  try:
    run_store.check(files.join(workdir, stage), config, stage)
  except UserError:
    return True
  return False


def _move_aside(workdir: str, stage: str, why: str) -> None:
  """A stage redone keeps its earlier results, moved to DIR/<stage>.before-<time>/."""
  folder = files.join(workdir, stage)
  if not files.exists(folder):
    return
  kept = f'{folder}.before-{time.strftime("%Y%m%d-%H%M%S")}'
  files.move(folder, kept)
  logging.info('recipe: %s is redone (%s); its earlier results are in %s', stage, why, kept)


def _finished_result(workdir: str, stage: str) -> StageResult | None:
  path = files.join(workdir, stage, 'result.json')
  if files.exists(path):
    result = read_result(path)
    if result.finished:
      return result
  return None


def _run_or_reuse(config, stage: str, workdir: str) -> StageResult:
  """The stage's finished result when its folder holds one of this config (another config is
  refused by `run_store`), else the stage run (or resumed) in DIR/<stage>/."""
  run_store.claim(files.join(workdir, stage), config, stage)
  result = _finished_result(workdir, stage)
  if result:
    logging.info('recipe: %s already finished (%s), not rerun', stage, _counts(result))
    return result
  logging.info('recipe: %s starts', stage)
  start = time.time()
  module = importlib.import_module(f'recipe_jax.stages.{stage}')
  result = module.run(config, workdir)
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
      return chosen, f'compare: variant {best} beats the baseline beyond noise: {words.settings(chosen)}'
    return {}, (f'compare: no variant beats the baseline beyond noise (best: {best}); the '
                'baseline goes on')
  if stage == 'tune' and result.metrics.get('best_params'):
    params = result.metrics['best_params']
    return params, f"tune: best trial {result.metrics['best_trial']} goes on: {words.settings(params)}"
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


def _finish(workdir: str, config, finished: bool = True) -> StageResult:
  """The recipe's own result: every stage finished in this workdir, in order, with what it
  handed on, whichever stages this command ran (a stage rerun alone leaves the others in)."""
  found, metrics = [], {}
  for stage in STAGES:
    result = _finished_result(workdir, stage)
    if result:
      found.append(_stage_verdict(result, hand_on(stage, result, config)[1]))
      metrics[stage] = result.metrics
  final = words.final_accuracy(metrics)
  headline = {'final_test_accuracy': final[1], 'from': final[0]} if final else {}
  result = StageResult('recipe', found, {**headline, 'stages_finished': len(found)},
                       ['report.html'], finished=finished)
  return report.finish(workdir, result, 'Recipe')  # which writes DIR/report.html too
