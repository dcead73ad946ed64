"""The conformance matrix: every built-in model (and a user NNX and Linen model) through every
stage that trains or applies a model, on tiny synthetic data of the model's input kind.

Rows come from `models.MODELS` (plus USER_ROWS), columns from `config_check.STAGES` less the
data-only ones: a new model or stage gets its cells here without an edit. Each row runs one
recipe over the recipe stages that are columns (each stage's own `run`, in-process, sharing
compiled programs between stages), then `train`, and `evaluate` and `replicate` of that run, and
`scale_up` of the recipe's tune trials. The rows are shared out between
this process and one helper process (this file run as a script): compiling, most of a row's
time, is single-threaded, and CI has 2 cores (the matrix: 7:02 in one process, 4:27 in two).
docs/models.md's models x stages table is checked against the same lists.
"""
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

from conftest import REPO, process_env
from recipe_jax.config import check as config_check, defaults
from recipe_jax.engine import compiled
from recipe_jax.errors import ChecksFailed, DivergenceError, UserError
from recipe_jax.model import keys, models
from recipe_jax.report import results as report
from recipe_jax.stages import recipe
from recipe_jax.verdicts import read_result

USER_ROWS = {'helpers.nnx_models:CNN': 'sequence',  # NNX, BatchNorm and Dropout
             'helpers.nnx_models:LinenCNN': 'sequence',  # a user's Linen, BatchNorm and Dropout
             'helpers.zoo:GapDropoutCNN': 'image'}  # global average pooling, dropout 0.2
ROWS = {**{name: keys.MADE_FOR[name] for name in models.MODELS}, **USER_ROWS}
COLUMNS = tuple(s for s in config_check.STAGES if s not in config_check.DATA_ONLY_STAGES)
RECIPE_COLUMNS = tuple(s for s in config_check.RECIPE_STAGES if s in COLUMNS)
TINY = {'mlp': {'width': 16}, 'cnn1d': {'width': 8}, 'gru': {'width': 4}, 'cnn2d': {'width': 8},
        'resnet18': {'width': 8}, 'resnet50': {'width': 4},
        'vit': {'width': 16, 'depth': 2, 'heads': 2, 'patch_size': 4}}
EXIT_CODES = {UserError: 2, ChecksFailed: 1, DivergenceError: 3}
# Rows that run only the stages where the model itself differs: ResNet-50 is ResNet-18's
# stages (BatchNorm over the data axis, the same heads) with bottleneck blocks, and compiling its
# 50 layers for every stage's programs cost 5 of CI's minutes. Its other cells skip, saying so.
LIGHT_ROWS = {'resnet50': ('sanity', 'train')}


def synthetic_npz(path, kind):
  """4 classes, each a fixed random template plus noise: learnable within a few steps."""
  rng = np.random.default_rng(0)
  shape = (16,) if kind == 'sequence' else (8, 8, 3)
  templates = rng.normal(size=(4, *shape))

  def split(n):
    y = np.arange(n) % 4
    return (templates[y] + 0.3 * rng.normal(size=(n, *shape))).astype(np.float32), y
  (x_train, y_train), (x_test, y_test) = split(192), split(64)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def matrix_config(model: str, npz_path: str):
  c = defaults.get_config()
  c.dataset.name = f'npz:{npz_path}'
  c.dataset.val_fraction = 0.25
  c.model.name = model
  for key, value in TINY.get(model, {}).items():
    c.model[key] = value
  c.batch_size, c.eval_batch_size = 16, 48
  c.optimizer.learning_rate = 1e-2
  # one eval (and one layer-monitor measurement) per run: what a cell checks, at less cost
  c.num_train_steps, c.log_every_steps = 20, 10
  c.eval_every_steps, c.checkpoint_every_steps = 20, 20
  c.augment.noise = 0.05  # so squeeze's TTA row runs
  c.sanity.steps, c.sanity.seed_steps, c.sanity.dynamics_every = 20, 2, 10
  c.sanity.overfit_steps = 60
  c.sanity.init_loss_batches, c.sanity.init_loss_batch_size = 4, 16
  c.inspect.cv_steps, c.inspect.cv_folds = 20, 2
  c.lr_find.seeds, c.lr_find.steps = 1, 20
  c.overfit.target_accuracy = 0.5
  c.compare.seeds = 1
  # Variants, trials and SWA that keep the train step's program (a constant learning rate does
  # not depend on the run's length): each row compiles its step a few times, not twenty.
  c.compare.variants = json.dumps({'shorter': {'num_train_steps': 10},
                                   'longer': {'num_train_steps': 30}})
  c.tune.trials = 2
  c.tune.space = json.dumps({'num_train_steps': {'type': 'int', 'low': 10, 'high': 30}})
  c.data_scaling.fractions, c.data_scaling.seeds = (0.25, 0.5, 1.0), 1
  c.squeeze.members, c.squeeze.swa_steps, c.squeeze.swa_every = 'seeds:2', 10, 5
  c.squeeze.tta_copies, c.squeeze.swa_learning_rate = 2, c.optimizer.learning_rate
  c.squeeze.student = '{}'  # the same model as student: distillation runs, no new program
  c.recipe.stages = ','.join(RECIPE_COLUMNS)  # a data-only stage is the same in every row
  c.recipe.continue_on_fail = True  # every stage runs, whatever an earlier one found
  c.recipe.pin_learning_rate = True  # lr_find's suggestion would make new programs downstream
  return c


def exit_code(stage_module, config, workdir):
  """What `python -m recipe_jax.main` would exit with: a stage's result, then its FAILs."""
  try:
    report.raise_if_failed(stage_module.run(config, workdir), workdir)
    return 0
  except tuple(EXIT_CODES) as e:
    return EXIT_CODES[type(e)]


# Seconds a row takes on the 2-core CI machine (compiling dominates: a ResNet-50's graph is
# compiled for each distinct program). Only a hint for sharing the rows out; others: DEFAULT_COST.
COST = {'resnet18': 80, 'resnet50': 60, 'vit': 40}
DEFAULT_COST = 20
_rows = {}  # {model: {'cells': {stage: (exit code, workdir)}, 'log': the row's log text}}


def compute_row(model, base, npz_dir):
  """Every cell of one row, in this process: the recipe (its stages in its own folder), then
  train and evaluate."""
  from recipe_jax.stages import evaluate, replicate, scale_up, train
  config = matrix_config(model, os.path.join(npz_dir, f'{ROWS[model]}.npz'))
  only = LIGHT_ROWS.get(model)
  if only:
    config.recipe.stages = ','.join(s for s in RECIPE_COLUMNS if s in only)
  cells = {}
  with logged() as log:
    for stage, module, extra in (('recipe', recipe, {}), ('train', train, {}),
                                 ('evaluate', evaluate, {'evaluate.run_dir': f'{base}/train'}),
                                 ('replicate', replicate, {'replicate.run_dir': f'{base}/train',
                                                           'replicate.seeds': 2,
                                                           'replicate.perturbations': '{}'}),
                                 # the recipe's tune trials, 1.5x longer: the same programs
                                 ('scale_up', scale_up, {
                                     'scale_up.from_dir': f'{base}/recipe',
                                     'scale_up.source': 'tune', 'scale_up.top_k': 2,
                                     'scale_up.changes': '{"num_train_steps": "x1.5"}'})):
      if only and stage not in only and stage != 'recipe':
        continue
      stage_config = config.copy_and_resolve_references()
      stage_config.stage = stage
      stage_config.update_from_flattened_dict(extra)
      workdir = os.path.join(base, stage)
      cells[stage] = (exit_code(module, stage_config, workdir), workdir)
  for stage in RECIPE_COLUMNS:  # run by the recipe in its own folder
    if only and stage not in only:
      continue
    found = read_result(os.path.join(base, 'recipe', stage, 'result.json'))
    cells[stage] = (1 if any(v.status == 'FAIL' for v in found.verdicts) else 0,
                    os.path.join(base, 'recipe'))
  compiled.forget()  # a row's programs serve no other row
  return {'cells': cells, 'log': log.getvalue()}


@contextlib.contextmanager
def logged():
  """The text of every log record (INFO and up) while the block runs."""
  text = io.StringIO()
  handler = logging.StreamHandler(text)
  handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
  root = logging.getLogger()
  level = root.level
  root.addHandler(handler)
  root.setLevel(min(level or logging.INFO, logging.INFO))
  try:
    yield text
  finally:
    root.removeHandler(handler)
    root.setLevel(level)


def split_rows(rows) -> tuple[list, list]:
  """Two lists of rows of about equal cost, costliest first: one for this process, one for a
  helper process. Compiling is single-threaded: on 2 cores the two overlap (about 1.3x)."""
  mine, helpers = [], []
  for row in sorted(rows, key=lambda r: -COST.get(r, DEFAULT_COST)):
    cost = lambda rows: sum(COST.get(r, DEFAULT_COST) for r in rows)
    (mine if cost(mine) <= cost(helpers) else helpers).append(row)
  return mine, helpers


class Helper:
  """A process computing some rows (this file run as a script), each into ROW.json in `base`."""

  def __init__(self, rows, base, npz_dir):
    self.rows, self.base = rows, base
    self.process = subprocess.Popen(
        [sys.executable, __file__, base, npz_dir, *rows], cwd=REPO, env=process_env(),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(base, 'stderr.txt'), 'w'))

  def row(self, model):
    path = os.path.join(self.base, f'{safe(model)}.json')
    deadline = time.time() + 1200
    while not os.path.exists(path):
      if self.process.poll() is not None or time.time() > deadline:
        self.process.kill()
        pytest.fail(f'the helper computing {model} stopped (exit {self.process.returncode}): '
                    + open(os.path.join(self.base, 'stderr.txt')).read()[-3000:])
      time.sleep(0.5)
    with open(path) as f:
      row = json.load(f)
    if 'error' in row:
      pytest.fail(f'row {model} raised in the helper:\n{row["error"]}')
    return row


def safe(model):
  return re.sub(r'\W', '_', model)


@pytest.fixture(scope='module')
def rows(request, tmp_path_factory):
  """run(model) -> the row's cells. The rows of the collected cells are shared between this
  process and a helper process started at the first cell."""
  wanted = [m for m in ROWS if any(getattr(item, 'callspec', None) and
                                   item.callspec.params.get('model') == m and
                                   item.originalname == 'test_every_model_runs_every_stage'
                                   for item in request.session.items)]
  mine, theirs = split_rows(wanted) if len(wanted) > 1 else (wanted, [])
  npz_dir = str(tmp_path_factory.mktemp('npz'))
  for kind in set(ROWS.values()):
    synthetic_npz(os.path.join(npz_dir, f'{kind}.npz'), kind)
  helper = Helper(theirs, str(tmp_path_factory.mktemp('helper')), npz_dir) if theirs else None

  def run(model):
    if model not in _rows:
      if helper and model in helper.rows:
        for own in (m for m in mine if m not in _rows):  # this process's rows first
          _rows[own] = compute_row(own, str(tmp_path_factory.mktemp(safe(own))), npz_dir)
        _rows[model] = helper.row(model)
      else:
        _rows[model] = compute_row(model, str(tmp_path_factory.mktemp(safe(model))), npz_dir)
    return _rows[model]
  yield run
  if helper:
    helper.process.kill()


@pytest.mark.parametrize('stage', COLUMNS)
@pytest.mark.parametrize('model', ROWS)
def test_every_model_runs_every_stage(model, stage, rows):
  if stage not in LIGHT_ROWS.get(model, COLUMNS):
    pytest.skip(f'{model} runs {", ".join(LIGHT_ROWS[model])} here; its other stages are '
                'those of a model of its kind (LIGHT_ROWS)')
  row = rows(model)
  code, workdir = row['cells'][stage]
  result = read_result(os.path.join(workdir, stage, 'result.json'))
  verdicts = {v.check: f'{v.status} {v.summary}' for v in result.verdicts}
  assert not [v for v in verdicts.values() if 'could not run' in v], verdicts
  assert 'Traceback' not in row['log'], row['log'][-3000:]
  assert code == 0, {k: v for k, v in verdicts.items() if v.startswith('FAIL')}
  for name in result.files:
    assert os.path.exists(os.path.join(workdir, name)), name


def test_docs_models_table_lists_every_model_and_stage():
  """docs/models.md's models x stages table (between its conformance matrix markers) has a row
  per model and a column per stage, from the same lists the matrix runs."""
  text = open(os.path.join(REPO, 'docs', 'models.md')).read()
  table = text[text.index('<!-- conformance matrix -->'):text.index('<!-- /conformance matrix -->')]
  header = [c.strip() for c in table.splitlines()[1].strip('|').split('|')]
  assert header[1:] == list(COLUMNS)
  rows = {line.strip('|').split('|')[0].strip().strip('`') for line in table.splitlines()[3:]
          if line.startswith('|')}
  assert rows == set(ROWS)


if __name__ == '__main__':  # the helper: python tests/test_conformance.py BASE NPZ_DIR ROW...
  base, npz_dir, *models_to_run = sys.argv[1:]
  for row_model in models_to_run:
    try:
      os.makedirs(os.path.join(base, safe(row_model)))
      done = compute_row(row_model, os.path.join(base, safe(row_model)), npz_dir)
    except BaseException:  # noqa: BLE001  the waiting cell fails with it
      done = {'error': traceback.format_exc()}
    with open(os.path.join(base, f'{safe(row_model)}.json.part'), 'w') as f:
      json.dump(done, f)
    os.replace(os.path.join(base, f'{safe(row_model)}.json.part'),
               os.path.join(base, f'{safe(row_model)}.json'))
