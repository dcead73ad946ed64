"""python -m recipe_jax.main --config=configs/mnist1d/cnn.py --workdir=DIR [--config.key=value ...]

Exit codes: 0 done (or preempted by SIGTERM after saving), 1 a check FAILed, 2 bad input
(including a user model or loss that fails, a damaged run directory, a service that is down
from the start), 3 training diverged, 4 the run directory's storage (gs://) or the study's
database stopped answering mid-run (after bounded retries; the same command resumes), 130
stopped by Ctrl-C (after saving what the stage had done; it wins over an earlier FAIL; a second
Ctrl-C stops at once).
"""
import ast
import glob
import importlib
import os
import re
import shlex
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only the data layer; hide its banner

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from recipe_jax import console, files  # noqa: E402
from recipe_jax.config import check as config_check
from recipe_jax.model import user_code
from recipe_jax.report import results as report
from recipe_jax.runs import store as run_store, tracking
from recipe_jax.errors import (ChecksFailed, DivergenceError, RefusedRun,  # noqa: E402
                               StorageUnavailable, UserError)

_CONFIG = config_flags.DEFINE_config_file(
    'config', None,
    'Config file, e.g. configs/mnist1d/cnn.py; override keys with --config.KEY=VALUE.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, reports.')
HELP_FLAGS = ('-h', '-help', '--help', '--helpshort', '--helpfull')
PACKAGE = os.path.dirname(os.path.abspath(__file__))


def fail(message: str, exit_code: int):
  print(f'recipe_jax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(exit_code)


def parse_flags(argv):
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
  except Exception as e:  # bad flag, override key or type
    fail(flag_error(e, argv), UserError.exit_code)
  if _CONFIG.value is None:
    fail('missing --config=FILE, the experiment (e.g. --config=configs/mnist1d/mlp.py); see '
         '--help', UserError.exit_code)
  if _WORKDIR.value is None:
    fail('missing --workdir=DIR, where the run keeps its checkpoints, metrics and reports; see '
         '--help', UserError.exit_code)
  try:
    _CONFIG.value.to_dict()  # ml_collections defers a load failure until first use
  except Exception as e:  # missing file, or an error inside it: its last line says which
    fail(f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}', UserError.exit_code)
  return remaining


def usage() -> str:
  """This module's docstring, the stages (each module's first paragraph) and the example
  configs of a source checkout."""
  lines = [__doc__.strip(), '', 'Stages (--config.stage=NAME):']
  for stage in config_check.STAGES:
    with open(os.path.join(PACKAGE, 'stages', f'{stage}.py')) as f:
      first = ast.get_docstring(ast.parse(f.read())).split('\n\n')[0]
    summary = re.split(r'(?<=[.?])\s', ' '.join(first.split()).split(': ', 1)[-1])[0]
    lines.append(f'  {stage:<13} {summary}')
  configs = sorted(glob.glob(os.path.join(os.path.dirname(PACKAGE), 'configs', '*', '*.py')))
  if configs:
    lines += ['', 'Example configs:', *(f'  {os.path.relpath(c)}' for c in configs)]
  lines += ['', 'Every key, its default and its rule: recipe_jax/config/defaults.py.']
  return '\n'.join(lines)


def flag_error(e: Exception, argv) -> str:
  """One plain line for a bad flag. An unknown --config key names the whole key and
  ml_collections' suggestion, instead of the repr of a KeyError inside an AttributeError."""
  unknown = e if isinstance(e, KeyError) else (e.__cause__ or e.__context__)
  if isinstance(unknown, KeyError) and unknown.args:
    text = str(unknown.args[0])
    name = text.splitlines()[0].strip("'")
    given = [a[len('--config.'):].split('=')[0] for a in argv if a.startswith('--config.')]
    key = next((g for g in given if name in g.split('.')), name)
    suggested = re.search(r'Did you mean "([^"]+)"', text)
    hint = ''
    if suggested:
      fixed = '.'.join(suggested.group(1) if part == name else part for part in key.split('.'))
      hint = f"; did you mean '{fixed}'?"
    return f"unknown config key '{key}'{hint} (every key is in recipe_jax/config/defaults.py)"
  return ' '.join(str(e).split())


def enable_compilation_cache(directory: str | None) -> None:
  """Compiled executables are kept on disk, so a second process with the same shapes (a rerun,
  a resumed or retried trial) does not compile again. '' turns it off."""
  if directory == '':
    return
  import jax
  directory = directory or os.path.join(os.path.expanduser('~'), '.cache', 'recipe_jax',
                                        'jax_cache')
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def run_stage(config, workdir: str):
  """The configured stage's StageResult. An exception from the user's own model or loss
  becomes a one-line UserError naming the phase; anything else keeps its traceback (our bug)."""
  stage = importlib.import_module(f'recipe_jax.stages.{config.stage}')
  try:
    with console.one_line_per_run(config.stage in console.MULTI_RUN_STAGES):
      return stage.run(config, workdir)
  except Exception as e:
    users = user_code.is_user_code(config.model.name) or user_code.is_user_code(config.loss)
    if not (users and hasattr(e, 'recipe_jax_phase')):
      raise
    logging.info('the user model or loss raised', exc_info=True, extra=console.FILE_ONLY)
    raise UserError(user_code.describe_failure(e, config.model.name, config.loss)) from None


_distributed = False  # set by main(): such a run exits the normal way
INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C


def main(argv):
  global _distributed
  config, workdir = _CONFIG.value, _WORKDIR.value
  _distributed = config.distributed
  verbose = flags.FLAGS.verbosity >= 1  # read first: absl's set_verbosity below changes the flag
  logging.set_verbosity(logging.ERROR)  # the checks' libraries stay quiet until the log exists
  try:
    config_check.check(config)  # before anything is written: a bad config leaves no workdir
    files.check_workdir(workdir)  # gs://: reachable and writable, within seconds
    check_study_storage(config, workdir)
    run_store.check(*stage_directory(config, workdir))  # another config's run: left untouched
  except RefusedRun as e:  # noted beside the run it left untouched, for the worklog
    run_store.note_refusal(e.directory, str(e),
                           'python -m recipe_jax.main ' + shlex.join(sys.argv[1:]))
    fail(str(e), e.exit_code)
  except UserError as e:
    fail(str(e), e.exit_code)
  console.setup(workdir, verbose=verbose)
  try:
    import jax  # after the console's set-up, so the backends' INFO lines go to log.txt
    if config.distributed:
      # CPU processes reach each other through gloo (TPU and GPU have their own collectives).
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      join_cluster(jax, config)
    enable_compilation_cache(config.compilation_cache_dir)
    from recipe_jax import multihost
    from recipe_jax.runs import provenance
    provenance.started_by(sys.argv, config_flags.get_config_filename(flags.FLAGS['config']))
    if config.stage != 'train':  # a train run claims its workdir itself (run_training)
      run_store.claim(*stage_directory(config, workdir))
    command = files.join(workdir, 'command.txt')
    if multihost.is_leader() and not files.exists(command):  # what started this workdir
      files.write_text(command, ' '.join(
          ['python -m recipe_jax.main', *map(shlex.quote, sys.argv[1:])]) + '\n')
    devices = jax.devices()
    logging.info('%s: %s on %s, %d x %s -> %s', config.stage, config.model.name,
                 config.dataset.name, len(devices), devices[0].platform, workdir)
    with tracking.tracked(config, workdir, kind='stage') as tracked_run:  # tracking=none: None
      result = run_stage(config, workdir)
      tracking.log_result(tracked_run, workdir, result)
    for line in report.closing_lines(result, workdir):
      logging.info('%s', line)
    from recipe_jax.engine import loop
    if not result.finished and loop.stopped_by() == 'SIGINT':  # before any earlier FAIL's exit 1
      console.sync_log()
      fail('interrupted (Ctrl-C) after saving what was done; the same command resumes',
           INTERRUPTED)
    report.raise_if_failed(result, workdir)
  except (UserError, DivergenceError, ChecksFailed, StorageUnavailable) as e:
    console.sync_log()
    fail(str(e), e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C where nothing more could be saved, or a second one
    console.sync_log()
    fail('interrupted (Ctrl-C); what was saved so far stays (checkpoints, finished stages), and '
         'the same command resumes from it', INTERRUPTED)
  except Exception as e:
    cause = files.unanswered(e) if files.is_remote(workdir) else None
    if cause is None:
      raise
    logging.info('the run directory stopped answering', exc_info=True, extra=console.FILE_ONLY)
    fail(f'--workdir={workdir}: the storage stopped answering mid-run '
         f'({user_code.one_line(cause)}, after gcsfs and tensorstore tried again); what was saved '
         f'stays (checkpoints, finished stages): the same command resumes once it answers. This '
         f"run's log: {console.local_log()}", StorageUnavailable.exit_code)
  console.sync_log()


def join_cluster(jax, config) -> None:
  """jax.distributed.initialize; a cluster that is not there is one line (exit 2)."""
  try:
    jax.distributed.initialize(config.coordinator_address, config.num_processes,
                               config.process_id)
  except Exception as e:  # noqa: BLE001  jax raises ValueError, RuntimeError or XlaRuntimeError
    raise UserError(f'distributed=True: cannot join the cluster ({user_code.one_line(e)}); '
                    'give coordinator_address, num_processes and process_id, or run where JAX '
                    'finds the cluster itself (Cloud TPU, SLURM)') from None


def stage_directory(config, workdir: str) -> tuple:
  """(directory, config, stage) whose identity `run_store` checks: a train run's workdir, or
  DIR/<stage>/ for the other stages."""
  if config.stage == 'train':
    return workdir, config, None
  return files.join(workdir, config.stage), config, config.stage


def check_study_storage(config, workdir: str) -> None:
  """A study's default storage is SQLite in the workdir, which cannot live on an object store."""
  runs_tune = config.stage == 'tune' or (
      config.stage == 'recipe' and 'tune' in config_check.recipe_stage_names(config.recipe.stages))
  if files.is_remote(workdir) and runs_tune and not config.tune.storage:
    raise UserError(f'--workdir={workdir}: the tune study cannot keep its default SQLite file on '
                    'an object store; set --config.tune.storage=postgresql+psycopg://USER@HOST/DB '
                    '(a server every worker reaches), or sqlite:////PATH/study.db on a local or '
                    'shared POSIX disk')


def run_and_exit() -> None:
  """app.run, then a quick exit: the interpreter's teardown (freeing XLA's client and every
  module) took ~0.7 s of each run, after every file was written and closed. Multi-host runs
  exit normally: jax.distributed's shutdown at exit tells the coordinator."""
  try:
    app.run(main, flags_parser=parse_flags)
    code = 0
  except SystemExit as e:  # app.run ends every run with one; None means success
    code = 0 if e.code is None else e.code
  if not isinstance(code, int) or _distributed:
    sys.exit(code)
  import logging as pylogging
  pylogging.shutdown()  # flushes and closes log.txt
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  run_and_exit()
