"""What to do next, from the verdicts and their numbers: for every WARN and FAIL one line that
says act or ignore, and why; and the next steps of the recipe, most urgent first.

Both read only result dicts (`results.StageResult.to_json`, as saved in result.json), so the
report, the console's closing lines and a later `python -m recipe_jax.report.results DIR`
say the same.
"""
import math

from recipe_jax.diagnose import noise, registry
from recipe_jax import words


def act_or_ignore(stage: str, verdict: dict) -> tuple[bool, str] | None:
  """(act, why) for a WARN or FAIL verdict; None for a PASS."""
  status, check = verdict['status'], verdict['check']
  # the rules read the verdict's numbers and its cause code (never its sentence)
  evidence = {**(verdict.get('evidence') or {}), 'cause': verdict.get('cause')}
  if status == 'PASS':
    return None
  registered = registry.find(stage, check)
  if registered is not None and registered.advice is not None:
    found = registered.advice(status, evidence)
    if found:
      return found
  for prefix, rule in RULES.items():
    if check.startswith(prefix):
      found = rule(status, evidence)
      if found:
        return found
  if status == 'FAIL':
    return True, ('a FAIL: what the later stages measure cannot be trusted until it is fixed '
                  '(the verdict says what was found and where)')
  return True, 'no rule says this WARN is expected here: read its evidence before going on'


def _variant(status, e):
  delta, seeds = e.get('delta'), e.get('seeds') or 0
  if e.get('noise') == 'beyond noise':  # beyond noise, and a WARN: the change made it worse
    return False, (f'the change makes the metric worse ({delta:+.4f}, beyond noise): keep the '
                   'baseline')
  if seeds < 2:
    return True, ('one seed per variant gives no noise estimate: rerun with compare.seeds >= 2 '
                  'before deciding')
  need = resolving(e)
  if need is None:
    return True, f'inside the noise with {seeds} seeds: more compare.seeds would tell'
  if need[0] == 'split':
    return True, (f'the difference ({delta:+.4f}) is inside the validation split\'s own error, '
                  f'which more seeds cannot lower: about {need[1]}x the validation examples '
                  '(dataset.val_fraction) would tell, if it matters to you')
  if need[0] == 'nothing':
    return False, 'no difference at all from the baseline: the change does nothing here'
  return True, (f'inside the noise with {seeds} seeds: about {need[1]} seeds per variant would '
                f'resolve a difference of {abs(delta):.4f} (compare.seeds={need[1]}), if it '
                'matters to you')


def resolving(e: dict):
  """What would tell a variant inside the noise from the baseline: ('seeds', per arm),
  ('split', times the validation examples), ('nothing', None) for no difference at all, or
  None without an estimate."""
  delta = e.get('delta')
  needed = noise.seeds_to_resolve(delta, e.get('seed_noise_level'), e.get('split_noise_level'),
                            e.get('seeds') or 0)
  if needed is None:
    return None
  if needed != math.inf:
    return 'seeds', needed
  return ('split', noise.split_factor(delta, e['split_noise_level'])) if delta else ('nothing', None)


def _learning_rate(status, e):
  if e.get('spread_factor', 0) > e.get('max_spread', math.inf):
    return True, 'the seeds disagree: more lr_find.steps or a larger batch give a steadier curve'
  if all(s.get('diverged_at_lr') is None for s in e.get('per_seed', [])):
    return False, ('the suggestion comes from where the loss fell fastest, which the curve '
                   'shows; only the point where it diverges was not reached (raise '
                   'lr_find.max_lr to see it)')
  return None


def _squeeze(status, e):
  return False, ('this squeeze did not pay on this model: deploy without it (the others of '
                 'the stage still stand)')


def _ensemble(status, e):
  return True, ('an ensemble below its average member means a broken member: look at each '
                "member's row (a diverged or stopped run) before using it")


def _more_data(status, e):
  return True, ('the learning curve is too uncertain to plan on: more data_scaling.seeds or '
                'fractions give a steadier fit')


def _train_val_gap(status, e):
  if e.get('cause') == 'gap_from_labels':
    return True, ('fix the labels first (the inspect stage names the rows); regularising would '
                  'not help')
  if e.get('cause') == 'gap_from_labels_and_overfitting':
    return True, ('fix the labels first (the inspect stage names the rows), then regularise: '
                  f"where the labels agree the model still overfits by "
                  f"{e.get('gap_where_labels_agree', math.nan):.3f}")
  return True, ('the model overfits: regularise (recipe step 4: more data, augmentation, weight '
                'decay, dropout) and compare the variants')


def _label_noise(status, e):
  if status == 'WARN' and e.get('cause') == 'random_label_noise':
    return True, ('look at the listed examples (label_noise.png): relabel or drop those that are '
                  'wrong; a few percent of random noise only caps the accuracy')
  return None


OUTLIER_SHARE = 0.01  # more outliers than this share of the split: a pipeline bug, not the data


def _outliers(status, e):
  count, examples = e.get('count', 0), e.get('examples') or 0
  if not examples:
    return None
  share = f'{count} of {examples} train examples ({100 * count / examples:.2g}%)'
  if count / examples <= OUTLIER_SHARE:
    return False, (f'{share}: a few unusual inputs are normal; look at outliers.png once (more '
                   f'than {OUTLIER_SHARE:.0%} would point to a corrupted block or a wrong scale)')
  return True, (f'{share}, more than {OUTLIER_SHARE:.0%}: look at outliers.png for a corrupted '
                'block of the file or a wrong scale')


def _test_saturation(status, e):
  found = []  # the verdict's own thresholds travel in its evidence
  needed = e.get('examples_to_resolve')
  if (needed is not None and needed != float('inf') and
      e.get('p_value', 0) >= e.get('alpha', 0.05)):
    found.append(f"the test set cannot tell {e['models'][0]} from {e['runner_up']}: about "
                 f"{needed:,.0f} test examples (now {e['examples']}) would, if the choice "
                 'between them matters to you')
  if (e.get('errors_left') or 0) < e.get('min_errors', 20):
    found.append(f"only {e.get('errors_left')} test errors are left: a larger or harder test "
                 'set would measure the next improvement')
  return True, '; '.join(found) or 'read its evidence'


def _seed_position(status, e):
  if e.get('cause') == 'metric_not_finite':
    return True, ('a run or a seed ended without a number (diverged, or no examples to '
                  'measure): find which in its summary.json and fix that before placing seeds')
  spread = f"{e.get('mean', math.nan):.4f} +- {e.get('std', math.nan):.4f}"
  if e.get('cause') == 'lucky_seed':
    return True, (f'report the config as {spread} over seeds, not this run; a choice made on '
                  'this run alone (a variant, a trial) may rest on its luck: check it on seeds')
  return False, (f'an unlucky seed: the config gives {spread}, better than this run; nothing to '
                 'fix, report the mean')


def _reproduced(status, e):
  causes = e.get('causes') or []
  return True, ('the same seed should give the same result: '
                + (f'start from what changed ({causes[0]})' if causes else
                   'nothing recorded changed, so look for a nondeterministic op or a file '
                   'outside git') + ' before comparing new runs with old ones')


def _sensitive(status, e):
  return True, ('a small change of this key moves the result beyond the noise: tune it (the '
                'tune stage) or hold it fixed across every comparison')


def _trends_hold(status, e):
  cause = e.get('cause')
  if cause == 'run_diverged':
    return True, (f"{', '.join(e.get('diverged', {}))} diverged at the larger scale: lower the "
                  'learning rate or add warmup there before you compare it')
  if cause == 'nothing_to_check':
    return True, ('no small-scale difference was beyond the noise, so nothing was tested: add '
                  'seeds (compare.seeds) or groups, then scale up again')
  if cause == 'trends_all_faded':
    return True, ('the small-scale differences are inside the noise at the larger scale: they '
                  'do not decide there; choose at the scale you will train at, or add seeds')
  return True, (f"the order at the small scale ({e.get('small_order')}) is not the order at the "
                f"larger ({e.get('large_order')}): decide at the scale you will train at")


def _input_blocks(status, e):
  if e.get('cause') == 'input_block':
    return True, (f"rows {e.get('first_row')} to {e.get('last_row')} differ from the rest of "
                  'their file: find out how they were made, then reprocess or drop them')
  if e.get('cause') == 'input_trend':
    return False, ('validation is carved from the training file at random, so it drifts with '
                   'it; act if you split by position or your test data comes from the end')
  return None


RULES = {'variant_': lambda s, e: _variant(s, e) if s == 'WARN' else None,
         'input_blocks_': _input_blocks,
         'learning_rate': _learning_rate,
         'ensemble': _ensemble, 'distillation': _squeeze,
         'weight_averaging': _squeeze, 'tta': _squeeze,
         'more_data': _more_data, 'train_val_gap': _train_val_gap, 'label_noise': _label_noise,
         'outliers': _outliers, 'test_saturation': _test_saturation,
         'seed_position': _seed_position, 'reproduced': _reproduced, 'sensitive_': _sensitive,
         'trends_hold': _trends_hold}


def lines(results: list) -> list:
  """[(stage, check, status, act, why)] for every WARN and FAIL of `results` (result dicts)."""
  found = []
  for r in results:
    if r['stage'] == 'recipe':  # its verdicts are the stages': their own checks are listed
      continue
    for v in r['verdicts']:
      decided = act_or_ignore(r['stage'], v)
      if decided:
        found.append((r['stage'], v['check'], v['status'], *decided))
  return found


def next_steps(results: list) -> list:
  """The recipe's next moves, most urgent first, each with the number it rests on."""
  by_stage = {r['stage']: r for r in results}
  verdicts = lambda stage: {v['check']: v for v in by_stage.get(stage, {}).get('verdicts', [])}
  failed = [f"{r['stage']}/{v['check']}" for r in results if r['stage'] != 'recipe'
            for v in r['verdicts'] if v['status'] == 'FAIL']
  steps = []
  if failed:
    steps.append(f"fix what FAILed before anything else: {', '.join(failed[:6])}"
                 + (f' and {len(failed) - 6} more' if len(failed) > 6 else ''))
  fits = verdicts('overfit').get('fits_training_set')
  if fits and fits['status'] == 'FAIL':
    steps.append('capacity: the model does not fit its training set; a wider or deeper model, or '
                  'more steps, before any regularisation')
  gap = next((v for r in results for v in r['verdicts'] if v['check'] == 'train_val_gap'
              and v['status'] == 'WARN'), None)
  if gap and gap.get('cause') in ('gap_from_labels', 'gap_from_labels_and_overfitting'):
    steps.append('fix the labels: the train-validation gap comes from rows labelled another way '
                 '(the inspect stage names them)' + (
                     ', not from overfitting' if gap['cause'] == 'gap_from_labels' else
                     ', and from overfitting: regularise after'))
  elif gap:
    steps.append('regularise: training accuracy exceeds validation by '
                 f"{gap['evidence'].get('gap', float('nan')):.3f}; compare augmentation, "
                 'weight decay and dropout as variants')
  more = verdicts('data_scaling').get('more_data')
  if more and more['status'] == 'PASS':
    e = more['evidence']
    if 'gain_2x' in e and not e.get('flattened'):
      steps.append(f"more data: doubling the training set would gain about {e['gain_2x']:.1%} "
                   f"accuracy (68% range {e['gain_2x_range'][0]:.1%} to "
                   f"{e['gain_2x_range'][1]:.1%})")
    else:
      steps.append('not more data of this kind: the learning curve has flattened; look at the '
                   'model, the labels or the input representation')
  for check, v in verdicts('compare').items():
    if v['status'] == 'PASS':
      steps.append(f"keep {check[len('variant_'):]}: it beats the baseline beyond noise "
                   f"({v['evidence'].get('delta', 0):+.4f})")
    elif v['status'] == 'WARN' and v['evidence'].get('noise') == 'inside noise':
      e, name = v['evidence'], check[len('variant_'):]
      need = resolving(e)
      if need and need[0] == 'split':
        steps.append(f"a larger validation split to judge {name}: its {e['delta']:+.4f} is "
                     f"inside the split's own error; about {need[1]}x the validation examples "
                     'would tell')
      elif need and need[0] == 'seeds':
        steps.append(f"more seeds for {name}: inside the noise with {e.get('seeds')}; about "
                     f"{need[1]} per variant would resolve its {e.get('delta', 0):+.4f}")
  squeeze = by_stage.get('squeeze', {}).get('metrics', {})
  ensemble = verdicts('squeeze').get('ensemble', {'status': 'PASS'})
  if squeeze.get('ensemble_test_accuracy') is not None and ensemble['status'] == 'PASS':
    gain = squeeze['ensemble_test_accuracy'] - squeeze.get('mean_member_test_accuracy', math.nan)
    steps.append(f"the ensemble is the model to use: test accuracy "
                 f"{words.number(squeeze['ensemble_test_accuracy'], 'accuracy')}"
                 + (f', {100 * gain:+.1f} points over its average member' if gain == gain else ''))
  acting = [f'{stage}/{check}' for stage, check, status, act, _ in lines(results)
            if act and status == 'WARN' and not check.startswith('variant_')]  # steps above
  if acting:
    steps.append(f"look at the WARNs marked act in report.html: {', '.join(acting[:6])}"
                 + (f' and {len(acting) - 6} more' if len(acting) > 6 else ''))
  if not steps:
    steps.append('nothing is in the way: every check passes or WARNs as expected here; scale up '
                 '(more data: data_scaling says what it would gain) and check that the trends '
                 'hold (stage=scale_up reruns compare\'s variants larger)')
  return steps
