"""Every config key has a validation rule, and every rule refuses what it must, in one line."""
import glob
import importlib.util
import json
import math
import os

import pytest

from conftest import REPO, load_config, run_main
from recipe_jax.config import check as config_check, defaults
from recipe_jax.errors import UserError

DEFAULTS = config_check.flatten(defaults.get_config())
BAD_VALUES = [(key, bad) for key, rule in config_check.RULES.items() for bad in rule.bad]


def test_every_key_in_defaults_has_a_rule_and_every_rule_a_key():
  assert set(DEFAULTS) == set(config_check.RULES)
  assert all(rule.bad for rule in config_check.RULES.values()), 'a rule nothing can fail'


@pytest.mark.parametrize('key, bad', BAD_VALUES,
                         ids=[f'{k}={b!r}' for k, b in BAD_VALUES])
def test_every_key_refuses_a_bad_value_naming_the_key_and_what_is_allowed(key, bad):
  with pytest.raises(UserError) as refused:
    config_check.check_values({**DEFAULTS, key: bad})
  message = str(refused.value)
  assert message.startswith(f'{key}=') and '\n' not in message, message
  assert ': ' in message  # ... and then what is allowed
  if not (isinstance(bad, float) and math.isnan(bad)):
    assert config_check._show(bad) in message


def test_the_defaults_and_every_config_file_pass():
  config_check.check_values(defaults.get_config())
  for path in sorted(glob.glob(os.path.join(REPO, 'configs', '*', '*.py'))):
    config_check.check_values(load_config(os.path.relpath(path, REPO)))


@pytest.mark.parametrize('changes, message', [
    ({'lr_find.min_lr': 1.0, 'lr_find.max_lr': 0.1}, 'lr_find.min_lr=1 must be below'),
    ({'optimizer.warmup_steps': 6000}, 'optimizer.warmup_steps=6000 must be below num_train'),
    ({'optimizer.schedule': 'warmup_cosine'}, 'warmup_cosine needs optimizer.warmup_steps'),
    ({'optimizer.weight_decay': 0.1}, 'weight_decay needs optimizer.name=adamw'),
    ({'label_smoothing': 0.1, 'loss': 'pkg.mod:fn'}, "label_smoothing applies to loss"),
    ({'num_processes': 2, 'process_id': 2}, 'process_id=2 must be below num_processes=2'),
    ({'stage': 'evaluate'}, 'stage=evaluate needs --config.evaluate.run_dir'),
    ({'stage': 'tune'}, 'tune.space is empty'),
    ({'stage': 'recipe'}, 'tune.space is empty'),  # the default recipe runs tune
    ({'dataset.test_split': 'validation'}, "test_split='validation': mnist1d has the splits"),
    ({'dataset.name': 'npz:/x.npz', 'dataset.test_split': 'test2'}, 'an .npz has one test split'),
])
def test_keys_that_must_agree_are_checked_together(changes, message):
  with pytest.raises(UserError, match=message):
    config_check.check_values({**DEFAULTS, **changes})


def test_a_key_without_a_rule_is_one_line_naming_it():
  with pytest.raises(UserError) as refused:
    config_check.check_values({**DEFAULTS, 'sanity.new_threshold': 1.0})
  message = str(refused.value)
  assert message.startswith('config keys without a validation rule: sanity.new_threshold;')
  assert 'RULES' in message and '\n' not in message


def test_the_gp_sampler_without_pytorch_is_one_line_naming_what_to_do(monkeypatch):
  space = json.dumps({'optimizer.learning_rate': {'type': 'float', 'low': 1e-4, 'high': 1e-2}})
  tune_gp = {**DEFAULTS, 'stage': 'tune', 'tune.space': space, 'tune.sampler': 'gp'}
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'torch' else real_find_spec(name, *a))
  with pytest.raises(UserError, match="GPSampler needs PyTorch.*pip install torch.*tpe"):
    config_check.check_values(tune_gp)
  config_check.check_values({**tune_gp, 'tune.sampler': 'tpe'})


@pytest.mark.parametrize('key, value, message', [
    ('compare.variants', '{"wd": {"optimizer.weight_decay": -1}}',
     'compare.variants["wd"]: optimizer.weight_decay=-1: use a number >= 0'),
    ('recipe.overrides', '{"sanity": {"model.dropout": 1.0}}',
     'recipe.overrides["sanity"]: model.dropout=1.0'),
    ('tune.space', '{"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}',
     'tune.space["model.dropout"]: model.dropout=1.5'),
    ('squeeze.student', '{"model.width": 0}', 'squeeze.student: model.width=0'),
    ('tune.space', '{"model.width": {"type": "categorical", "choices": [8, "wide"]}}',
     "model.width='wide'"),
])
def test_json_keys_check_the_values_they_set_with_those_keys_rules(key, value, message):
  with pytest.raises(UserError) as refused:
    config_check.check_values({**DEFAULTS, key: value})
  assert message in str(refused.value)


def test_a_variant_of_a_checked_config_is_checked_too(small_config):
  with pytest.raises(UserError, match='model.dropout=1.0'):
    config_check.variant(small_config, {'model.dropout': 1.0})
  with pytest.raises(UserError, match='no_such'):
    config_check.variant(small_config, {'model.no_such': 1})
  assert config_check.variant(small_config, {'model.dropout': 0.5}, 7).seed == 7


@pytest.mark.parametrize('flag, key', [
    ('dataset.train_fraction=2', 'dataset.train_fraction=2'),
    ('model.dropout=1.0', 'model.dropout=1.0'),
    ('label_smoothing=2', 'label_smoothing=2'),
    ('ema_decay=1.5', 'ema_decay=1.5'),
    ('augment.mixup=-1', 'augment.mixup=-1'),
    ('dataset.downsample=0', 'dataset.downsample=0'),
    ('optimizer.warmup_steps=-5', 'optimizer.warmup_steps=-5'),
    ('optimizer.decay_at=(1.5,)', 'optimizer.decay_at=(1.5,)'),
    ('optimizer.grad_clip_norm=-1', 'optimizer.grad_clip_norm=-1'),
    ('model.width=0', 'model.width=0'),
    ('tune.storage=mysql://user@localhost/db', "its database driver is not installed"),
])
def test_named_bad_values_are_one_line_exit_2_before_the_workdir_exists(tmp_path, flag, key):
  workdir = tmp_path / 'run'
  result = run_main(workdir, '--config=configs/mnist1d/mlp.py', f'--config.{flag}')
  assert result.returncode == 2, result.stderr
  [line] = result.stderr.strip().splitlines()
  assert line.startswith('recipe_jax: error: ') and key in line, line
  assert not workdir.exists()  # nothing written for a config that never ran
