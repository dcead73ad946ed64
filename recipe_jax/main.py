"""python -m recipe_jax.main --config=configs/mnist1d/cnn.py --workdir=DIR [--config.key=value ...]

Exit codes: 0 done (or preempted by SIGTERM after saving), 1 a check FAILed (sanity and
overfit stages), 2 bad input, 3 training diverged.
"""
import importlib
import logging as pylogging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only the data layer; hide its banner

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from recipe_jax import config_check  # noqa: E402
from recipe_jax.errors import ChecksFailed, DivergenceError, UserError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None,
    'Config file, e.g. configs/mnist1d/cnn.py; override keys with --config.KEY=VALUE.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, reports.')
flags.mark_flags_as_required(['config', 'workdir'])


def fail(message: str, exit_code: int):
  print(f'recipe_jax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(exit_code)


def parse_flags(argv):
  try:
    remaining = flags.FLAGS(argv)
  except Exception as e:  # bad flag, override key or type
    fail(' '.join(str(e).split()), UserError.exit_code)
  try:
    _CONFIG.value.to_dict()  # ml_collections defers a load failure until first use
  except Exception as e:  # missing file, or an error inside it: its last line says which
    fail(f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}', UserError.exit_code)
  return remaining


def quiet_orbax_info(record) -> bool:
  """Orbax logs several INFO lines per checkpoint; keep its warnings and errors only."""
  return record.levelno >= pylogging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  logging.set_verbosity(logging.INFO)
  pylogging.getLogger('absl').addFilter(quiet_orbax_info)
  config = _CONFIG.value
  try:
    config_check.check(config)
    if config.distributed:
      import jax
      jax.distributed.initialize()
    stage = importlib.import_module(f'recipe_jax.stages.{config.stage}')
    stage.run(config, _WORKDIR.value)
  except (UserError, DivergenceError, ChecksFailed) as e:
    fail(str(e), e.exit_code)
  logging.info('done: %s', _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
