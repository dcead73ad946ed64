"""Checks a resolved config before anything heavy runs.

Every key of `defaults.py` has a rule in RULES (its type, range or choices; the JSON-valued keys
their structure, down to the keys and values they set), and RELATIONS check what keys must
satisfy together. Each problem is one line naming the key, its value and what is allowed (a
UserError, exit code 2); a test walks every key with values its rule must refuse.
"""
import dataclasses
import importlib.util
import json
import math
import numbers
import re
from typing import Any, Callable

from recipe_jax.config import selection
from recipe_jax.data.embedded import EMBEDDED
from recipe_jax.model import keys as model_keys
from recipe_jax.errors import UserError

# The one list of stages, in the recipe's order (report.html shows them in it too).
STAGES = ('inspect', 'sanity', 'lr_find', 'overfit', 'train', 'compare', 'data_scaling', 'tune',
          'squeeze', 'evaluate', 'replicate', 'scale_up', 'recipe')
# The stages that read another run's results, and the recipe itself, are not the recipe's steps
RECIPE_STAGES = tuple(s for s in STAGES
                      if s not in ('train', 'evaluate', 'replicate', 'scale_up', 'recipe'))
DATA_ONLY_STAGES = ('inspect',)  # the others train or apply the configured model
TUNE_TYPES = ('float', 'int', 'categorical')


@dataclasses.dataclass(frozen=True)
class Rule:
  allowed: str  # what is allowed, in words: "a number in [0, 1)"
  accepts: Callable[[Any], bool]
  bad: tuple  # values the rule must refuse (the key-walking test tries each)
  explain: Callable[[Any], str | None] = lambda value: None  # a more precise reason, or None


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def number(low=None, high=None, *, low_open=False, high_open=False, integer=False,
           optional=False) -> Rule:
  """An int (`integer`) or a finite number within the bounds; None too when `optional`."""
  kind = 'an integer' if integer else 'a number'
  if low is not None and high is not None:
    allowed = f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  elif low is not None:
    allowed = f"{kind} {'>' if low_open else '>='} {low:g}"
  else:
    allowed = kind
  if optional:
    allowed += ' (or None)'

  def accepts(v):
    if v is None:
      return optional
    if not (_is_int(v) if integer else _is_real(v)):
      return False
    if low is not None and (v <= low if low_open else v < low):
      return False
    return high is None or (v < high if high_open else v <= high)

  step = 1 if integer else 0.5
  bad = ['abc']
  if low is not None:
    bad.append(low if low_open else low - step)
  if high is not None:
    bad.append(high if high_open else high + step)
  if not integer:
    bad.append(float('nan'))
  if not optional:
    bad.append(None)
  return Rule(allowed, accepts, tuple(bad))


def positive_int(optional=False) -> Rule:
  return number(1, integer=True, optional=optional)


def one_of(*choices) -> Rule:
  return Rule(f"one of {', '.join(map(str, choices))}", lambda v: v in choices, ('no_such',))


def boolean() -> Rule:
  return Rule('True or False', lambda v: isinstance(v, bool), ('yes', 1))


def text(optional=False) -> Rule:
  """A non-empty string (or None when `optional`)."""
  return Rule('a non-empty string' + (' (or None)' if optional else ''),
              lambda v: (v is None and optional) or (isinstance(v, str) and v.strip() != ''),
              ('', 3) if optional else ('', None, 3))


def any_text() -> Rule:
  return Rule('a string', lambda v: isinstance(v, str), (None, 3))


def fractions_rule(minimum: int, *, ordered: bool) -> Rule:
  """A tuple of numbers in (0, 1): `decay_at` (increasing) or data_scaling's (in (0, 1])."""
  def accepts(v):
    if not isinstance(v, (tuple, list)) or len(set(v)) < minimum:
      return False
    if not all(_is_real(f) and 0 < f <= 1 and (ordered is False or f < 1) for f in v):
      return False
    return not ordered or list(v) == sorted(set(v))
  allowed = ('a tuple of increasing fractions in (0, 1), e.g. (0.5, 0.75)' if ordered else
             f'a tuple of at least {minimum} distinct fractions in (0, 1], e.g. '
             '(0.125, 0.25, 0.5, 1.0)')
  return Rule(allowed, accepts, ((1.5,), (0.75, 0.5), 'abc') if ordered else
              ((0.5, 1.0), (0.5, 1.0, 2.0), 'abc'))


def factors_rule() -> Rule:
  """A tuple of positive numbers other than 1 (multipliers of a configured value), or empty."""
  def accepts(v):
    return isinstance(v, (tuple, list)) and all(_is_real(f) and f > 0 and f != 1 for f in v)
  return Rule('a tuple of positive factors other than 1, e.g. (0.1, 10, 100), or ()', accepts,
              ((0, 10), (1, 10), 'abc', (float('nan'),)))


def storage_rule() -> Rule:
  """None or a SQLAlchemy database URL whose driver is installed."""
  return Rule('a database URL such as postgresql+psycopg://USER@HOST/DB or sqlite:///PATH '
              '(or None)', lambda v: v is None or (isinstance(v, str) and not storage_problem(v)),
              ('nonsense', 'nosuchdb://host/db', 3), lambda v: storage_problem(v)
              if isinstance(v, str) else None)


def storage_problem(url: str) -> str | None:
  """Why a study storage URL cannot be opened here, before any training: not a URL, an
  unknown database, or a driver that is not installed."""
  import sqlalchemy
  try:
    dialect = sqlalchemy.engine.make_url(url).get_dialect()
  except sqlalchemy.exc.ArgumentError:
    return 'not a database URL'
  except sqlalchemy.exc.NoSuchModuleError as e:
    return f'unknown database ({e})'
  try:
    dialect.import_dbapi()
  except ImportError as e:
    return (f"its database driver is not installed ({e}); pip install it, or use "
            'postgresql+psycopg://... (installed with recipe_jax)')
  return None


def json_rule(example: str, parse: Callable[[Any], None], bad: tuple) -> Rule:
  """A JSON string; `parse(decoded)` raises UserError on a bad structure."""
  def explain(v):
    try:
      parse(json.loads(v) if v.strip() else None)
    except json.JSONDecodeError as e:
      return f'not valid JSON ({e})'
    except UserError as e:
      return str(e)
    return None
  return Rule(f'JSON such as {example}', lambda v: isinstance(v, str) and explain(v) is None,
              ('{not json', *bad), lambda v: explain(v) if isinstance(v, str) else None)


def _overrides(value, what: str, allow_empty=True) -> dict:
  """A flat {config key: value} whose keys exist and whose values pass their rules."""
  if not isinstance(value, dict) or (not value and not allow_empty):
    raise UserError(f'{what} must map config keys to values, e.g. {{"model.dropout": 0.1}}')
  for key, v in value.items():
    if key not in RULES:
      raise UserError(f"{what} sets '{key}', which is not a config key (see "
                      'recipe_jax/config/defaults.py)')
    problem = _problem(key, v)
    if problem:
      raise UserError(f'{what}: {problem}')
  return value


def parse_variants(value) -> dict:
  """compare.variants: {"name": {"config.key": value}}; 'baseline' is the unchanged config."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise UserError('compare.variants must map each variant name to {"config.key": value}')
  if 'baseline' in value:
    raise UserError("compare.variants: 'baseline' is the unchanged config; give the variant "
                    'another name')
  for name, overrides in value.items():
    _overrides(overrides, f'compare.variants["{name}"]')
  return value


def parse_space(value) -> dict:
  """tune.space: {"config.key": {"type": float|int|categorical, "low", "high", "log",
  "choices"}}; both ends of a range (and every choice) must be values the key allows."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise UserError('tune.space must map config keys to specs, e.g. {"optimizer.learning_rate": '
                    '{"type": "float", "low": 1e-4, "high": 3e-2, "log": true}}')
  for key, spec in value.items():
    where = f'tune.space["{key}"]'
    if not isinstance(spec, dict) or spec.get('type') not in TUNE_TYPES:
      raise UserError(f'{where}: give {{"type": one of {", ".join(TUNE_TYPES)}, ...}}')
    if spec['type'] == 'categorical':
      if not isinstance(spec.get('choices'), list) or not spec['choices']:
        raise UserError(f'{where}: a categorical needs a non-empty "choices" list')
      examples = spec['choices']
    else:
      low, high = spec.get('low'), spec.get('high')
      if not _is_real(low) or not _is_real(high) or low >= high:
        raise UserError(f'{where}: needs numbers "low" < "high", got {low}, {high}')
      if spec.get('log') and low <= 0:
        raise UserError(f'{where}: a log range needs low > 0, got {low}')
      examples = [int(low), int(high)] if spec['type'] == 'int' else [float(low), float(high)]
    for example in examples:
      _overrides({key: example}, where)
  return value


FACTOR = re.compile(r'^([x/])((\d+\.?\d*|\.\d+)(e[-+]?\d+)?)$')


def _change(key: str, change, where: str) -> None:
  """One change of a key: a factor "x1.5" / "/2" (> 0), or a value its rule accepts."""
  if key not in RULES:
    raise UserError(f"{where} names '{key}', which is not a config key (see "
                    'recipe_jax/config/defaults.py)')
  factor = FACTOR.match(change) if isinstance(change, str) else None
  if factor and float(factor.group(2)) <= 0:
    raise UserError(f'{where}: {change!r} would make {key} zero; a factor is > 0')
  if not factor and _problem(key, change):
    raise UserError(f'{where}: {_problem(key, change)} (a factor is written "x1.5" or "/1.5")')


def parse_perturbations(value) -> dict:
  """replicate.perturbations: {"config.key": [change, ...]} ('{}': none)."""
  if value is None:
    return {}
  if not isinstance(value, dict) or not all(isinstance(c, list) and c for c in value.values()):
    raise UserError('replicate.perturbations must map config keys to lists of changes, e.g. '
                    '{"optimizer.learning_rate": ["/1.5", "x1.5"]}')
  for key, changes in value.items():
    for change in changes:
      _change(key, change, f'replicate.perturbations["{key}"]')
  return value


def parse_changes(value) -> dict:
  """scale_up.changes: {"config.key": change}, at least one."""
  if not isinstance(value, dict) or not value:
    raise UserError('scale_up.changes must map config keys to changes, e.g. '
                    '{"num_train_steps": "x10", "model.width": "x4", "dataset.train_fraction": 1.0}')
  for key, change in value.items():
    _change(key, change, f'scale_up.changes["{key}"]')
  return value


def changed(key: str, value, change):
  """The value of `key` after `change`: "xF" multiplies `value`, "/F" divides it (an integer
  stays an integer, and one of at least 1 stays at least 1), anything else replaces it. A
  change that leaves the value as it is (0 x2, an integer 1 /1.5) is a UserError: it would
  measure nothing."""
  factor = FACTOR.match(change) if isinstance(change, str) else None
  new = change
  if factor:
    if not _is_real(value):
      raise UserError(f'{key} is {_show(value)} in this run, which the factor {change!r} cannot '
                      'scale; give the new value instead')
    f = float(factor.group(2))
    new = value * f if factor.group(1) == 'x' else value / f
    if _is_int(value):
      new = max(1, int(round(new))) if value >= 1 else int(round(new))
  if new == value:
    raise UserError(f'{change_name(key, change)} leaves {key} at {_show(value)} in this run: it '
                    'would change nothing; give a larger factor or another value')
  return new


def run_value(config, key: str):
  """A key's value in a run's config, a built-in model's width None read as its reference
  width (the same model either way)."""
  value = flatten(config)[key]
  if key == 'model.width' and value is None:
    from recipe_jax.model import models
    value = models.reference_width(config.model.name)
  return value


def change_name(key: str, change) -> str:
  """'optimizer.learning_rate x1.5', or 'model.dropout=0.1' for a value."""
  factor = isinstance(change, str) and FACTOR.match(change)
  return f'{key} {change}' if factor else f'{key}={change}'


def parse_stage_overrides(value) -> dict:
  """recipe.overrides: {"stage": {"config.key": value}}."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise UserError('recipe.overrides must map stages to {"config.key": value}, e.g. '
                    '{"overfit": {"num_train_steps": 2000}}')
  for stage, overrides in value.items():
    if stage not in RECIPE_STAGES:
      raise UserError(f"recipe.overrides names stage '{stage}'; use {', '.join(RECIPE_STAGES)}")
    _overrides(overrides, f'recipe.overrides["{stage}"]')
  return value


def parse_student(value) -> dict | None:
  """squeeze.student: '' (no student) or {"config.key": value} for the distilled student."""
  return None if value is None else _overrides(value, 'squeeze.student')


def recipe_stage_names(text_value: str) -> list:
  return [s.strip() for s in text_value.split(',') if s.strip()]


def _members_ok(v) -> bool:
  if not isinstance(v, str) or not v.strip():
    return False
  if v.startswith('seeds:'):
    return v[len('seeds:'):].isdigit() and int(v[len('seeds:'):]) >= 1
  if v.startswith('tune:'):
    return bool(v[len('tune:'):].strip())
  return True


SELECTION = Rule(f"a validation metric: {selection.describe()}; the test split never selects",
                 lambda v: v in selection.DIRECTIONS, ('test_accuracy', 'train_loss', 'no_such'))

RULES = {
    'stage': one_of(*STAGES),
    'seed': number(0, 2**31 - 1, integer=True),
    'distributed': boolean(),
    'coordinator_address': Rule('HOST:PORT (or None)', lambda v: v is None or (
        isinstance(v, str) and v.rpartition(':')[2].isdigit() and v.rpartition(':')[0] != ''),
                                ('localhost', ':123', 3)),
    'num_processes': positive_int(optional=True),
    'process_id': number(0, integer=True, optional=True),
    'compilation_cache_dir': Rule('a directory, or \'\' for none (or None: the default)',
                                  lambda v: v is None or isinstance(v, str), (3,)),
    'init_from': text(optional=True),
    'init_from_skip': any_text(),
    'init_from_freeze': any_text(),
    'dataset.name': text(),
    'dataset.data_dir': text(optional=True),
    'dataset.val_fraction': number(0, 1, high_open=True),
    'dataset.train_fraction': number(0, 1, low_open=True),
    'dataset.subset_seed': number(0, integer=True),
    'dataset.normalize': boolean(),
    'dataset.downsample': positive_int(),
    'dataset.stats_from': text(optional=True),
    'dataset.image_key': text(),
    'dataset.label_key': text(),
    'dataset.test_split': text(),
    'dataset.pipeline': one_of('device', 'grain', 'auto'),
    'dataset.device_memory_fraction': number(0, 1, low_open=True),
    'dataset.grain_threads': positive_int(),
    'dataset.prefetch_batches': positive_int(),
    'model.name': text(),
    'model.width': positive_int(optional=True),
    'model.depth': positive_int(optional=True),
    'model.dropout': number(0, 1, high_open=True),
    'model.heads': positive_int(optional=True),
    'model.mlp_ratio': number(0, low_open=True, optional=True),
    'model.patch_size': positive_int(optional=True),
    'model.pool': Rule('cls or mean (or None: cls)', lambda v: v in ('cls', 'mean', None),
                       ('max', 3)),
    'model.log_prior_output_bias': boolean(),
    'loss': text(),
    'label_smoothing': number(0, 1, high_open=True),
    'ema_decay': number(0, 1, high_open=True),
    'augment.shift': number(0, integer=True),
    'augment.scale': number(0, 1, high_open=True),
    'augment.noise': number(0),
    'augment.crop_padding': number(0, integer=True),
    'augment.flip': boolean(),
    'augment.mixup': number(0),
    'augment.cutmix': number(0),
    'early_stopping.patience': number(0, integer=True),
    'early_stopping.min_delta': number(0),
    'optimizer.name': one_of('adam', 'adamw', 'sgd'),
    'optimizer.learning_rate': number(0, low_open=True),
    'optimizer.momentum': number(0, 1, high_open=True),
    'optimizer.weight_decay': number(0),
    'optimizer.schedule': one_of('constant', 'cosine', 'warmup_cosine', 'linear', 'step'),
    'optimizer.warmup_steps': number(0, integer=True),
    'optimizer.decay_at': fractions_rule(1, ordered=True),
    'optimizer.decay_factor': number(0, 1, low_open=True),
    'optimizer.grad_clip_norm': number(0, low_open=True, optional=True),
    'optimizer.accumulate_steps': positive_int(),
    'batch_size': positive_int(),
    'eval_batch_size': positive_int(),
    'num_train_steps': positive_int(),
    'log_every_steps': positive_int(),
    'eval_every_steps': positive_int(),
    'checkpoint_every_steps': positive_int(),
    'max_to_keep': positive_int(),
    'divergence_factor': number(1, low_open=True),
    'eval_train_split': boolean(),
    'max_train_val_gap': number(0, 1),
    'monitor_layers': boolean(),
    'profile_steps': number(0, integer=True),
    'seeds_side_by_side': one_of('on', 'off', 'auto'),
    'compute_dtype': one_of('float32', 'bfloat16'),
    'tracking': one_of('none', 'mlflow', 'wandb'),
    'tracking_uri': any_text(),
    'tracking_project': text(),
    'overfit.target_accuracy': number(0, 1, low_open=True),
    'human_baseline': number(0, 1, optional=True),
    'sanity.seed_steps': positive_int(),
    'sanity.init_loss_batches': number(2, integer=True),
    'sanity.init_loss_batch_size': positive_int(),
    'sanity.init_loss_max_z': number(0, low_open=True),
    'sanity.init_loss_max_ratio': number(1, low_open=True),
    'sanity.dependency_examples': number(4, integer=True),
    'sanity.steps': number(10, integer=True),
    'sanity.baseline_margin': number(0, 1, high_open=True),
    'sanity.min_loss_drop': number(0, 1, high_open=True),
    'sanity.dynamics_every': positive_int(),
    'sanity.dynamics_examples': positive_int(),
    'sanity.overfit_examples': positive_int(),
    'sanity.overfit_steps': positive_int(),
    'sanity.overfit_max_loss': number(0, low_open=True),
    'sanity.max_gradient_ratio': number(1, low_open=True),
    'sanity.max_relative_gradient': number(0, low_open=True),
    'sanity.max_dead_fraction': number(0, 1, low_open=True),
    'sanity.max_saturated_fraction': number(0, 1, low_open=True),
    'sanity.max_copied_units': number(0, 1, low_open=True),
    'sanity.min_gradient_share': number(0, 1, high_open=True),
    'sanity.lr_sweep': factors_rule(),
    'lr_find.min_lr': number(0, low_open=True),
    'lr_find.max_lr': number(0, low_open=True),
    'lr_find.steps': number(20, integer=True),
    'lr_find.seeds': positive_int(),
    'lr_find.smoothing': number(0, 1, high_open=True),
    'lr_find.stop_factor': number(1, low_open=True),
    'lr_find.max_spread_factor': number(1),
    'compare.variants': json_rule('{"dropout": {"model.dropout": 0.1}}', parse_variants,
                                  ('[]', '{"baseline": {}}', '{"a": {"no_such_key": 1}}',
                                   '{"a": {"model.dropout": 1.5}}')),
    'compare.seeds': positive_int(),
    'compare.metric': SELECTION,
    'compare.storage': storage_rule(),
    'compare.study_name': text(optional=True),
    'compare.heartbeat_s': positive_int(),
    'tune.space': json_rule('{"optimizer.learning_rate": {"type": "float", "low": 1e-4, '
                            '"high": 3e-2, "log": true}}', parse_space,
                            ('[]', '{"model.width": {"type": "int", "low": 0, "high": 8}}',
                             '{"no_such_key": {"type": "float", "low": 0, "high": 1}}')),
    'tune.sampler': one_of('qmc', 'random', 'tpe', 'gp'),
    'tune.trials': positive_int(),
    'tune.metric': SELECTION,
    'tune.pruner': one_of('none', 'median', 'hyperband'),
    'tune.pruner_startup_trials': number(0, integer=True),
    'tune.storage': storage_rule(),
    'tune.study_name': text(optional=True),
    'tune.heartbeat_s': positive_int(),
    'data_scaling.fractions': fractions_rule(3, ordered=False),
    'data_scaling.seeds': positive_int(),
    'data_scaling.flat_gain': number(0),
    'data_scaling.max_fit_rms': number(0, low_open=True),
    'data_scaling.max_gain_range': number(0, low_open=True),
    'squeeze.members': Rule("'seeds:N' (N >= 1), 'tune:DIR' or run directories separated by "
                            'commas', _members_ok, ('', 'seeds:0', 'seeds:x', 'tune:')),
    'squeeze.top_k': positive_int(),
    'squeeze.swa_steps': number(0, integer=True),
    'squeeze.swa_every': positive_int(),
    'squeeze.swa_learning_rate': number(0, low_open=True, optional=True),
    'squeeze.ema_decay': number(0, 1, low_open=True, high_open=True),
    'squeeze.tta_copies': number(0, integer=True),
    'squeeze.student': json_rule('{"model.width": 8} (or \'\' for no student)', parse_student,
                                 ('[]', '{"model.width": 0}')),
    'squeeze.temperature': number(0, low_open=True),
    'squeeze.tolerance': number(0),
    'recipe.stages': Rule(f"stage names separated by commas, from {', '.join(RECIPE_STAGES)}",
                          lambda v: isinstance(v, str) and bool(recipe_stage_names(v)) and all(
                              s in RECIPE_STAGES for s in recipe_stage_names(v)),
                          ('', 'inspect,train', 'nonsense')),
    'recipe.rerun': Rule(f"'' or stage names separated by commas, from "
                         f"{', '.join(RECIPE_STAGES)}", lambda v: isinstance(v, str) and all(
                             s in RECIPE_STAGES for s in recipe_stage_names(v)),
                         ('train', 'lr_find,nonsense', 3)),
    'recipe.continue_on_fail': boolean(),
    'recipe.pin_learning_rate': boolean(),
    'recipe.overrides': json_rule('{"overfit": {"num_train_steps": 2000}}',
                                  parse_stage_overrides,
                                  ('[]', '{"train": {}}', '{"overfit": {"num_train_steps": 0}}')),
    'analysis.enabled': boolean(),
    'analysis.split': one_of('val', 'test', 'train'),
    'analysis.max_recall_gap': number(0, 1),
    'analysis.max_ece': number(0, 1),
    'analysis.calibration_bins': positive_int(),
    'analysis.top_confusions': positive_int(),
    'analysis.examples': number(0, integer=True),
    'evaluate.run_dir': text(optional=True),
    'replicate.run_dir': text(optional=True),
    'replicate.seeds': number(2, integer=True),
    'replicate.perturbations': json_rule(
        '{"optimizer.learning_rate": ["/1.5", "x1.5"]}', parse_perturbations,
        ('[]', '{"optimizer.learning_rate": "x2"}', '{"optimizer.learning_rate": []}',
         '{"no_such_key": ["x2"]}', '{"model.dropout": ["x0"]}', '{"model.dropout": [1.5]}')),
    'replicate.metric': SELECTION,
    'replicate.interval': number(0.5, 1, high_open=True),
    'scale_up.from_dir': text(optional=True),
    'scale_up.source': one_of('compare', 'tune'),
    'scale_up.top_k': number(2, integer=True),
    'scale_up.changes': json_rule('{"num_train_steps": "x10"}', parse_changes,
                                  ('[]', '{}', '{"no_such_key": "x2"}', '{"num_train_steps": 0}',
                                   '{"num_train_steps": "/0"}')),
    'scale_up.min_rank_correlation': number(-1, 1),
    'evaluate.step': number(0, integer=True, optional=True),
    'inspect.max_imbalance': number(1),
    'inspect.leakage_rms_threshold': number(0),
    'inspect.examples_per_class': positive_int(),
    'inspect.outlier_z': number(0, low_open=True),
    'inspect.cv_folds': number(2, integer=True),
    'inspect.cv_steps': positive_int(),
    'inspect.cv_max_examples': number(10, integer=True),
    'inspect.cv_min_accuracy': number(0, 1),
    'inspect.shift_max_examples': number(100, integer=True),
    'inspect.drift_alpha': number(0, 1, low_open=True, high_open=True),
    'inspect.drift_min_ks': number(0, 1),
    'inspect.domain_warn_auc': number(0.5, 1),
    'inspect.domain_fail_auc': number(0.5, 1),
    'inspect.label_drift_warn_v': number(0, 1),
    'inspect.label_drift_fail_v': number(0, 1),
    'inspect.train_to_test_z': number(0, low_open=True),
    'inspect.shortcut_score': number(0, 1, low_open=True),
    'inspect.block_min_effect': number(0, low_open=True),
    'inspect.trend_min_r2': number(0, 1, low_open=True),
}
JSON_KEYS = ('compare.variants', 'tune.space', 'recipe.overrides', 'squeeze.student',
             'replicate.perturbations', 'scale_up.changes')


def _show(value) -> str:
  return repr(value) if isinstance(value, str) else str(value)


def _problem(key: str, value) -> str | None:
  rule = RULES[key]
  if rule.accepts(value):
    return None
  return f'{key}={_show(value)}: {rule.explain(value) or "use " + rule.allowed}'


def _relations(flat: dict) -> list:
  """Problems of keys that must agree with each other."""
  found = model_keys.problems({k[len('model.'):]: v for k, v in flat.items()
                               if k.startswith('model.')})
  name = flat['dataset.name']
  if flat['dataset.test_split'] != 'test' and (name in EMBEDDED or name.startswith('npz:')):
    found.append(f"dataset.test_split={flat['dataset.test_split']!r}: "
                 + (f'{name} has the splits train and test' if name in EMBEDDED else
                    'an .npz has one test split (x_test, y_test)')
                 + "; test_split chooses among a TFDS dataset's splits")
  if flat['lr_find.min_lr'] >= flat['lr_find.max_lr']:
    found.append(f"lr_find.min_lr={flat['lr_find.min_lr']:g} must be below lr_find.max_lr="
                 f"{flat['lr_find.max_lr']:g}")
  for low, high in (('inspect.domain_warn_auc', 'inspect.domain_fail_auc'),
                    ('inspect.label_drift_warn_v', 'inspect.label_drift_fail_v')):
    if flat[low] > flat[high]:
      found.append(f'{low}={flat[low]:g} must not be above {high}={flat[high]:g}')
  if flat['optimizer.schedule'] == 'warmup_cosine' and flat['optimizer.warmup_steps'] < 1:
    found.append('optimizer.schedule=warmup_cosine needs optimizer.warmup_steps >= 1')
  if flat['optimizer.warmup_steps'] >= flat['num_train_steps'] > 1:
    found.append(f"optimizer.warmup_steps={flat['optimizer.warmup_steps']} must be below "
                 f"num_train_steps={flat['num_train_steps']}: the learning rate would never "
                 'reach optimizer.learning_rate')
  if flat['optimizer.name'] == 'adam' and flat['optimizer.weight_decay']:
    found.append('optimizer.weight_decay needs optimizer.name=adamw (decoupled) or sgd; adam '
                 'would silently ignore it')
  if flat['label_smoothing'] and flat['loss'] != 'cross_entropy':
    found.append(f"label_smoothing applies to loss 'cross_entropy', not '{flat['loss']}'")
  if flat['process_id'] is not None and flat['num_processes'] is not None and (
      flat['process_id'] >= flat['num_processes']):
    found.append(f"process_id={flat['process_id']} must be below num_processes="
                 f"{flat['num_processes']}")
  if flat['stage'] == 'evaluate' and not flat['evaluate.run_dir']:
    found.append('stage=evaluate needs --config.evaluate.run_dir=DIR, the --workdir of a train '
                 'run')
  for stage, key, what in (('replicate', 'replicate.run_dir', 'the --workdir of a finished '
                            'train run'), ('scale_up', 'scale_up.from_dir', 'the --workdir of a '
                                           'finished compare or tune stage')):
    if flat['stage'] == stage and not flat[key]:
      found.append(f'stage={stage} needs --config.{key}=DIR, {what}')
  runs_tune = flat['stage'] == 'tune' or (
      flat['stage'] == 'recipe' and 'tune' in recipe_stage_names(flat['recipe.stages']))
  if runs_tune and not flat['tune.space'].strip('{} \n'):
    found.append('tune.space is empty; give the keys to search, e.g. \'{"optimizer.'
                 'learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": true}}\'')
  if runs_tune and flat['tune.sampler'] == 'gp' and importlib.util.find_spec('torch') is None:
    found.append("tune.sampler='gp': Optuna's GPSampler needs PyTorch, which is not installed; "
                 "pip install torch, or use tune.sampler=tpe (Bayesian optimisation without it)")
  return found


def flatten(config) -> dict:
  """{'dataset.name': ..., ...} for every leaf of the config."""
  out = {}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = value
  walk(config if isinstance(config, dict) else config.to_dict(), '')
  return out


def check_values(config, nested: bool = False) -> None:
  """Every key against its rule, then the relations; one UserError listing the problems.
  `nested`: a variant of a checked config (its JSON keys were checked with the parent)."""
  flat = flatten(config)
  unknown = sorted(set(flat) - set(RULES))
  if unknown:  # a key in defaults.py without a rule is our bug, caught by the key-walking test
    raise UserError(f"config keys without a validation rule: {', '.join(unknown)}; a developer "
                    'adding a key gives it a rule in RULES (recipe_jax/config/check.py)')
  problems = [p for key, value in flat.items()
              if not (nested and key in JSON_KEYS) for p in [_problem(key, value)] if p]
  if not problems:
    problems = _relations(flat)
  if problems:
    raise UserError('; '.join(problems))


def check(config) -> None:
  """The values, then the names that need a look-up (dataset, model, loss)."""
  check_values(config)
  from recipe_jax.data import sources  # imported here: the checks above are cheap
  from recipe_jax.model import losses, models
  sources.check_dataset_name(config.dataset.name)
  models.check_name(config.model.name)
  models.check_keys(config.model)
  losses.create(config.loss)
  check_tracking_installed(config.tracking)


def check_tracking_installed(backend: str) -> None:
  """`tracking=mlflow|wandb`: a one-line UserError naming the extra when the package is missing."""
  if backend != 'none' and importlib.util.find_spec(backend) is None:
    raise UserError(f'tracking={backend} needs the {backend} package: pip install -e '
                    f'".[{backend}]"')


def decoded(config, key: str):
  """A JSON-valued key's content, checked ('' and '{}' mean none)."""
  value = flatten(config)[key]
  parse = {'compare.variants': parse_variants, 'tune.space': parse_space,
           'recipe.overrides': parse_stage_overrides, 'squeeze.student': parse_student,
           'replicate.perturbations': parse_perturbations, 'scale_up.changes': parse_changes}[key]
  problem = _problem(key, value)
  if problem:
    raise UserError(problem)
  return parse(json.loads(value) if value.strip() else None) or ({} if key != 'squeeze.student'
                                                                   else None)


def variant(config, overrides: dict, seed: int | None = None):
  """A copy of `config` for one run of a multi-run stage: stage 'train', this seed, the
  overrides applied and checked (an unknown key or a bad value is a UserError)."""
  found = config.copy_and_resolve_references()
  found.stage = 'train'
  if seed is not None:
    found.seed = seed
  found.lock()  # an override of a key that does not exist is an error, not a new key
  try:
    found.update_from_flattened_dict(overrides)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise UserError(f'override {overrides}: {e}') from None
  check_values(found, nested=True)
  return found
