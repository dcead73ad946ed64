"""The same planted defects through recipe_jax's checks and through deepchecks' suites, side by
side: deepchecks 0.19.1 is the yardstick for data checks (never a dependency; it imports only
with older pins, so it runs in its own venv through scripts/deepchecks_runner.py).

  python3 -m venv /work/deepchecks-venv && /work/deepchecks-venv/bin/pip install \\
      deepchecks==0.19.1 scikit-learn==1.5.2 pandas==2.2.3 numpy==1.26.4 category-encoders==2.6.4
  python scripts/compare_deepchecks.py --deepchecks_python=/work/deepchecks-venv/bin/python

Each defect is planted in a copy of the digits data (x_train, y_train, x_test, y_test). Our
side: the inspect stage and a short train run (its val_vs_test verdict); a row lists every
check that did not PASS. deepchecks' side: the checks of its data_integrity and
train_test_validation suites that failed. Both sides leave out in the planted rows what they
already report on the clean data (constant border pixels, ambiguous digits, a correlated pair
of pixels), which the first row shows.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))


def planted_sets(x_train, y_train, x_test, y_test) -> dict:
  from test_shift_checks import CAUGHT_BY, plant
  found = {'clean': (x_train, y_train, x_test, y_test)}
  for defect in CAUGHT_BY:
    found[defect] = plant(defect, x_train, y_train, x_test, y_test)
  return found


def ours(path: str, workdir: str) -> list:
  from recipe_jax.config import defaults
  from recipe_jax.stages import inspect, train
  c = defaults.get_config()
  c.dataset.name = f'npz:{path}'
  verdicts = inspect.run(c, os.path.join(workdir, 'inspect')).verdicts
  c.num_train_steps, c.eval_every_steps, c.analysis.enabled = 1000, 500, False
  c.model.name, c.optimizer.learning_rate = 'mlp', 1e-3
  verdicts += train.run(c, os.path.join(workdir, 'train')).verdicts
  return [f'{v.check} {v.status}' for v in verdicts if v.status != 'PASS']


def deepchecks(python: str, path: str) -> list:
  out = subprocess.run([python, os.path.join(REPO, 'scripts', 'deepchecks_runner.py'), path],
                       capture_output=True, text=True, check=True).stdout
  return sorted({c['check'] for c in json.loads(out)['checks'] if c['passed'] is False})


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--deepchecks_python', default='/work/deepchecks-venv/bin/python')
  args = parser.parse_args()
  from recipe_jax.config import defaults
  from recipe_jax.data import datasets as data
  c = defaults.get_config().dataset
  c.name, c.normalize, c.val_fraction = 'digits', False, 0.0
  d = data.load(c)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    baseline = None, None
    for name, (xt, yt, xs, ys) in planted_sets(d.x_train, d.y_train, d.x_test, d.y_test).items():
      path = os.path.join(tmp, f'{len(rows)}.npz')
      np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
      theirs = deepchecks(args.deepchecks_python, path)
      mine = ours(path, os.path.join(tmp, str(len(rows))))
      if name == 'clean':
        baseline = set(mine), set(theirs)  # what the clean data shows is not a finding
      else:
        mine = [m for m in mine if m not in baseline[0]]
        theirs = [t for t in theirs if t not in baseline[1]]
      rows.append((name, mine, theirs))
      print(name, mine, rows[-1][2], file=sys.stderr, flush=True)
  print('| planted in digits | recipe_jax (not PASS) | deepchecks 0.19.1 (failed) |')
  print('|---|---|---|')
  for name, mine, theirs in rows:
    print(f"| {name} | {', '.join(mine) or 'all PASS'} | {', '.join(theirs) or 'missed'} |")


if __name__ == '__main__':
  main()
