"""False alarms of the sanity stage on the clean zoo: ordinary models as users write them
(tests/helpers/zoo.py), on each embedded dataset, over several seeds, with the configs'
defaults (configs/<dataset>/sanity.py, only model.name and the seed changed).

  python scripts/zoo.py --seeds=5 [--models=ReluMLP,GapCNN] [--datasets=digits]
                        [--out=zoo.json] [--markdown=docs/zoo.md]

A false alarm is a FAIL, or a diagnosis other than PASS, on a healthy model; WARNs are counted
apart (human_baseline's, which asks for a number only the user has, left out). The held-out
models (zoo.HELD_OUT, chosen before the zoo first ran) are reported apart: no threshold was
tuned on them. Also reported: the share of layers whose input's nonlinearity the sanity stage
read from the traced program (`layer_inputs` in its activations_seen evidence). Each run's
verdicts are kept in --out as they finish, so a rerun with the same --out resumes.
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))

from helpers import zoo  # noqa: E402

from recipe_jax.engine import compiled  # noqa: E402

NOT_COUNTED = ('human_baseline',)


def dataset_sanity_config(dataset: str):
  """configs/<dataset>/sanity.py's config, as --config= loads it."""
  import importlib.util
  path = os.path.join(REPO, 'configs', dataset, 'sanity.py')
  spec = importlib.util.spec_from_file_location('sanity_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def sanity_config(model: str, dataset: str, seed: int, data_dir: str | None):
  c = dataset_sanity_config(dataset)
  c.model.name = zoo.model_name(model, dataset)
  c.seed = seed
  if data_dir:
    c.dataset.data_dir = data_dir
  return c


def run_one(model, dataset, seed, workdir, data_dir) -> dict:
  """One sanity run: every verdict's status, what alarmed, and the layers identified."""
  from recipe_jax import words
  from recipe_jax.stages import sanity
  start = time.time()
  verdicts = sanity.run(sanity_config(model, dataset, seed, data_dir), workdir).verdicts
  found = {v.check: v for v in verdicts}
  alarms = {c: words.sentence(v) for c, v in found.items()
            if v.status == 'FAIL' or (c == 'diagnosis' and v.status != 'PASS')}
  warns = {c: words.sentence(v) for c, v in found.items()
           if v.status == 'WARN' and c not in NOT_COUNTED and c not in alarms}
  seen = found['activations_seen'].evidence if 'activations_seen' in found else {}
  inputs = [k for k in seen.get('layer_inputs', {}).values() if k['kind'] != 'input']
  return {'statuses': {c: v.status for c, v in found.items()}, 'alarms': alarms, 'warns': warns,
          'layers': len(inputs) + len(seen.get('not_seen', [])),  # inside a loop: not read
          'identified': sum(1 for k in inputs if k['identified']),
          'seconds': round(time.time() - start, 1)}


def table(runs: dict, seeds: int) -> str:
  """Markdown: false alarms and WARNs per model and dataset, tuned and held-out apart."""
  lines = []
  for part, names in (('tuned on', [m for m in zoo.MODELS if m not in zoo.HELD_OUT]),
                      ('held out', list(zoo.HELD_OUT))):
    lines += [f'\n### Models {part}\n', '| model | dataset | runs | false alarms | WARNs | '
              'checks that alarmed or warned |', '|---|---|---|---|---|---|']
    total = alarmed = 0
    for model in names:
      for dataset in zoo.DATASETS:
        done = [runs[k] for k in (f'{model}/{dataset}/{s}' for s in range(seeds)) if k in runs]
        if not done:
          continue
        alarms = sum(bool(r['alarms']) for r in done)
        warns = sum(bool(r['warns']) for r in done)
        checks = collections.Counter(c for r in done for c in [*r['alarms'], *r['warns']])
        total, alarmed = total + len(done), alarmed + alarms
        lines.append(f'| {model} | {dataset} | {len(done)} | {alarms} | {warns} | ' +
                     (', '.join(f'{c} {n}' for c, n in sorted(checks.items())) or '-') + ' |')
    lines.append(f'| **all** | | {total} | {alarmed} | | |')
  layers = sum(r['layers'] for r in runs.values())
  identified = sum(r['identified'] for r in runs.values())
  lines.append(f'\nLayers whose input nonlinearity was read from the program: {identified} of '
               f'{layers} ({identified / max(layers, 1):.1%}), over {len(runs)} runs.')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--models', default='', help='comma-separated (default: the whole zoo)')
  parser.add_argument('--datasets', default=','.join(zoo.DATASETS))
  parser.add_argument('--out', default='zoo.json')
  parser.add_argument('--markdown', default='')
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  models = args.models.split(',') if args.models else list(zoo.MODELS)
  runs = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      runs = json.load(f)['runs']
  base = tempfile.mkdtemp()
  start = time.time()
  for model in models:
    for dataset in args.datasets.split(','):
      for seed in range(args.seeds):
        key = f'{model}/{dataset}/{seed}'
        if key in runs:
          continue
        try:
          runs[key] = run_one(model, dataset, seed, os.path.join(base, key.replace('/', '_')),
                              args.data_dir)
        except Exception as e:  # a crash is an alarm too, and the zoo goes on
          runs[key] = {'statuses': {}, 'alarms': {'crash': f'{type(e).__name__}: {e}'[:300]},
                       'warns': {}, 'layers': 0, 'identified': 0, 'seconds': 0}
        r = runs[key]
        print(f'{key}: {len(r["alarms"])} alarms, {len(r["warns"])} WARNs ({r["seconds"]} s, '
              f'{time.time() - start:.0f} s in all)', flush=True)
        for check, summary in r['alarms'].items():
          print(f'  ALARM {check}: {summary[:220]}', flush=True)
        with open(args.out, 'w') as f:
          json.dump({'seeds': args.seeds, 'runs': runs}, f, indent=1)
      compiled.forget()  # a model's programs serve no other model
  text = table(runs, args.seeds)
  print(text)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
