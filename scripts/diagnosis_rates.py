"""Detection and diagnosis rates of the sanity stage on a defect generator, and its false
alarms on the clean zoo models the defects are planted in (the yardsticks: DEFault 94.3%
detection and 63.5% diagnosis, DeepFD 52%).

  python scripts/diagnosis_rates.py [--task=classification] [--tuned=2] [--held_out=1]
                                    [--out=rates.json] [--markdown=docs/diagnosis_rates.md]

The sample is stratified: every defect class of the task (tests/helpers/defects.py) at every
magnitude, each planted into `--tuned` models the thresholds were tuned on and `--held_out`
of the zoo's held-out models (rotating through them), on MNIST-1D and digits alternately, a
seed each; then every one of those models clean on both datasets. Every run is the sanity
stage with the dataset's config defaults (configs/<dataset>/sanity.py): only the model, the
loss, the data or the learning rate carry the defect. About an hour on 2 cores.

- Detected: a check other than diagnosis and human_baseline FAILs, or WARNs where the same
  model on the same data without the defect does not (the checks alone).
- Diagnosed: the diagnosis verdict's most likely cause is the class's; where it names none, a
  non-PASS check names it (the class's (check, words) pairs).
- False alarms: on clean models and on the classes marked clean (not bugs), FAILs (and a
  diagnosis other than PASS) and WARNs counted apart.
Held-out models are reported apart. Each run's verdicts are kept in --out as they finish, so a
rerun with the same --out resumes; `--code=DIR` runs another checkout's recipe_jax (today's
rates beside an older commit's).
"""
import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_COUNTED = ('diagnosis', 'human_baseline')
DATASETS = ('mnist1d', 'digits')


def plan(task: str, tuned: int, held_out: int) -> list:
  """[(class, magnitude, arch, part, dataset, seed)]: the stratified sample, then the clean
  runs (class None)."""
  from helpers import defects
  runs, turn = [], collections.Counter()
  for name, defect in defects.DEFECTS[task].items():
    group = defects.ARCHS[defect.archs]
    for magnitude in defect.magnitudes:
      for part, count in (('tuned', tuned), ('held_out', held_out)):
        choices = group[part]
        for _ in range(min(count, len(choices))):
          i = turn[(defect.archs, part)]
          turn[(defect.archs, part)] += 1
          runs.append((name, magnitude, choices[i % len(choices)], part,
                       DATASETS[len(runs) % 2], len(runs) % 5))
  clean = {(arch, part) for _, _, arch, part, _, _ in runs}
  for arch, part in sorted(clean):
    for dataset in DATASETS:
      runs.append((None, None, arch, part, dataset, 0))
  return runs


def configure(name, magnitude, arch, dataset, seed, base):
  """The sanity config of one run: the dataset's defaults with the defect planted."""
  from helpers import defects, zoo
  from zoo import dataset_sanity_config  # scripts/zoo.py, beside this script
  c = dataset_sanity_config(dataset)
  c.seed = seed
  c.model.name = zoo.model_name(arch, dataset)
  if name is None:
    return c
  defect = defects.DEFECTS_BY_NAME[name]
  if defect.where == 'model':
    c.model.name = defects.planted_model(defects_module(), c.model.name, name, magnitude)
  elif defect.where == 'loss':
    c.loss = defects.planted_loss(defects_module(), name, magnitude)
  elif defect.where == 'config':
    c.optimizer.learning_rate = c.optimizer.learning_rate * magnitude
  elif defect.where == 'data':
    from recipe_jax.data import sources
    x_train, y_train, x_test, y_test, _, _ = sources.arrays(c.dataset)
    arrays = defects.planted_data({'x_train': x_train, 'y_train': y_train, 'x_test': x_test,
                                   'y_test': y_test}, name, magnitude, seed)
    path = os.path.join(base, f'{dataset}_{name}_{magnitude}_{seed}.npz'.replace(' ', '_'))
    import numpy as np
    np.savez(path, **arrays)
    c.dataset.name = f'npz:{path}'
    if name == 'inputs not normalised':
      c.dataset.normalize = False
  return c


def defects_module():
  from helpers import defects
  return defects


def run_one(key, config, workdir) -> dict:
  from recipe_jax import words
  from recipe_jax.stages import sanity
  sentence = getattr(words, 'sentence', lambda v: v.summary)  # --code=DIR: older code
  start = time.time()
  try:
    verdicts = sanity.run(config, workdir).verdicts
  except Exception as e:  # a crashed stage is a detection of sorts, and a false alarm on clean
    return {'statuses': {'crash': 'FAIL'}, 'summaries': {'crash': f'{type(e).__name__}: {e}'},
            'seconds': round(time.time() - start, 1)}
  return {'statuses': {v.check: v.status for v in verdicts},
          'summaries': {v.check: sentence(v) for v in verdicts if v.status != 'PASS'},
          # the cause codes (a checkout from before they existed has none: --code=DIR)
          'causes': {v.check: v.cause for v in verdicts if getattr(v, 'cause', None)},
          'seconds': round(time.time() - start, 1)}


def diagnosed(run: dict) -> str | None:
  """The words of the diagnosis' most likely cause, from its code (from its sentence for a
  record of older code); None when it names none."""
  from recipe_jax.causes import CAUSES
  if 'causes' in run:
    code = run['causes'].get('diagnosis')
    return CAUSES[code] if code and code != 'ambiguous' else None
  cause = re.search(r'most likely cause: ([^.]+)\.', run['summaries'].get('diagnosis', ''))
  return cause.group(1) if cause else None


def scored(run: dict, named, quiet_when_clean=None) -> tuple[bool, bool]:
  """(detected by the checks alone, the right cause named). Detected: a check FAILs, or WARNs
  where the same model on the same data raised no WARN without the defect
  (`quiet_when_clean`: those checks; None: every check). When the diagnosis names a most
  likely cause, that cause must be the class's (a wrong one is a misdiagnosis, whatever else
  a check said); otherwise a non-PASS check must name it."""
  detected = any(s == 'FAIL' or (s == 'WARN' and (quiet_when_clean is None or
                                                  c in quiet_when_clean))
                 for c, s in run['statuses'].items() if c not in NOT_COUNTED)
  cause = diagnosed(run)
  if cause:
    return detected, any(words in cause for check, words in named if check == 'diagnosis')
  return detected, any(words in run['summaries'].get(check, '') for check, words in named
                       if check != 'diagnosis')


def alarms(run: dict) -> tuple[bool, bool]:
  """(a FAIL or a non-PASS diagnosis, a WARN): on a healthy model, false alarms."""
  statuses = run['statuses']
  fail = any(s == 'FAIL' for s in statuses.values()) or statuses.get('diagnosis', 'PASS') != 'PASS'
  warn = any(s == 'WARN' for c, s in statuses.items() if c not in NOT_COUNTED)
  return fail, warn


def rates(results: dict, task: str) -> dict:
  """{class: {part: (detected, cause named, runs)}} over the defect runs of `results`."""
  from helpers import defects
  warned_clean = collections.defaultdict(set)  # (model, dataset) -> checks that WARN clean
  for r in results.values():
    if r['class'] is None:
      warned_clean[(r['arch'], r['dataset'])] |= {c for c, s in r['statuses'].items()
                                                  if s == 'WARN'}
  found = {}
  for name, defect in defects.DEFECTS[task].items():
    if defect.clean:
      continue
    for part in ('tuned', 'held_out'):
      rows = [r for r in results.values() if r['class'] == name and r['part'] == part]
      scores = [scored(r, defect.named, set(r['statuses']) - warned_clean[(r['arch'],
                                                                           r['dataset'])])
                for r in rows]
      found.setdefault(name, {})[part] = (sum(d for d, _ in scores), sum(n for _, n in scores),
                                          len(rows))
  return found


def report(results: dict, task: str, baseline: dict | None = None) -> str:
  """Markdown tables; with `baseline` (another commit's results on the same sample), its
  detection and diagnosis beside these."""
  from helpers import defects
  now, before = rates(results, task), rates(baseline, task) if baseline else None
  head = ('| defect class | magnitudes | detected (tuned) | cause named (tuned) | '
          'detected (held-out models) | cause named (held-out models) |')
  lines = [f'## {task}: detection and diagnosis per defect class', '',
           head + (' before: detected | before: cause named |' if before else ''),
           '|---|---|---|---|---|---|' + ('---|---|' if before else '')]
  cell = lambda d, n: f'{d}/{n}' if n else '-'
  for name, parts in now.items():
    cells = []
    for part in ('tuned', 'held_out'):
      d, named, n = parts[part]
      cells += [cell(d, n), cell(named, n)]
    if before:
      d = sum(before[name][p][0] for p in parts)
      named = sum(before[name][p][1] for p in parts)
      n = sum(before[name][p][2] for p in parts)
      cells += [cell(d, n), cell(named, n)]
    magnitudes = ', '.join(f'{m:g}' for m in defects.DEFECTS_BY_NAME[name].magnitudes)
    lines.append(f'| {name} | {magnitudes} | ' + ' | '.join(cells) + ' |')
  total = lambda table, part, i: sum(p[part][i] for p in table.values())
  share = lambda table, parts, i: (sum(total(table, p, i) for p in parts) /
                                   max(sum(total(table, p, 2) for p in parts), 1))
  row = (f"| **all** | | {share(now, ['tuned'], 0):.0%} | {share(now, ['tuned'], 1):.0%} | "
         f"{share(now, ['held_out'], 0):.0%} | {share(now, ['held_out'], 1):.0%} |")
  if before:
    row += (f" {share(before, ['tuned', 'held_out'], 0):.0%} | "
            f"{share(before, ['tuned', 'held_out'], 1):.0%} |")
  lines.append(row)
  lines += ['', f'## {task}: false alarms on clean models and on changes that are not bugs', '',
            '| model or change | part | runs | FAIL | WARN | checks |', '|---|---|---|---|---|---|']
  groups = collections.defaultdict(list)
  for r in results.values():
    if r['class'] is None:
      groups[(r['arch'], r['part'])].append(r)
    elif defects.DEFECTS_BY_NAME[r['class']].clean:
      groups[(r['class'], r['part'])].append(r)
  for (what, part), rows in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
    marks = [alarms(r) for r in rows]
    checks = collections.Counter(c for r in rows for c, s in r['statuses'].items()
                                 if s != 'PASS' and c not in ('human_baseline',))
    lines.append(f'| {what} | {part} | {len(rows)} | {sum(f for f, _ in marks)} | '
                 f'{sum(w for _, w in marks)} | ' +
                 (', '.join(f'{c} {n}' for c, n in sorted(checks.items())) or '-') + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--task', default='classification')
  parser.add_argument('--tuned', type=int, default=2)
  parser.add_argument('--held_out', type=int, default=1)
  parser.add_argument('--out', default='diagnosis_rates.json')
  parser.add_argument('--markdown', default='')
  parser.add_argument('--only', default='', help='defect classes to run, separated by |')
  parser.add_argument('--baseline', default='', help="another commit's --out, shown beside")
  args = parser.parse_args()
  sys.path.insert(0, os.path.join(REPO, 'tests'))
  from recipe_jax.engine import compiled
  results = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)['results']
  base = tempfile.mkdtemp()
  start = time.time()
  wanted = lambda name: not args.only or name in args.only.split('|')
  sample = sorted((r for r in plan(args.task, args.tuned, args.held_out)
                   if r[0] is None or wanted(r[0])), key=lambda r: (r[2], r[4]))  # by model
  previous_arch = None
  for name, magnitude, arch, part, dataset, seed in sample:
    key = f'{name}|{magnitude}|{arch}|{dataset}|{seed}'
    if key in results:
      continue
    if arch != previous_arch:
      compiled.forget()  # a model's programs serve no other model
      previous_arch = arch
    config = configure(name, magnitude, arch, dataset, seed, base)
    run = run_one(key, config, os.path.join(base, str(len(results))))
    results[key] = {'class': name, 'magnitude': magnitude, 'arch': arch, 'part': part,
                    'dataset': dataset, 'seed': seed, **run}
    failed = [c for c, s in run['statuses'].items() if s == 'FAIL']
    print(f'{key}: FAIL {failed or "-"} ({run["seconds"]} s, {time.time() - start:.0f} s in all)',
          flush=True)
    with open(args.out, 'w') as f:
      json.dump({'task': args.task, 'results': results}, f, indent=1)
  baseline = None
  if args.baseline:
    with open(args.baseline) as f:
      baseline = json.load(f)['results']
  text = report(results, args.task, baseline)
  print(text)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
