"""What a person sees: the pipeline's own lines, compact, on the console; everything else
(absl INFO lines from JAX, TFDS and orbax, TensorFlow's C++ banner, Python warnings) goes to
DIR/log.txt, and to the console too with --verbosity=1."""
import contextlib
import logging as pylogging
import os
import sys
import tempfile
import time

import numpy as np

from absl import logging

from recipe_jax import files

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
FILE_ONLY = {'file_only': True}  # logging.info(..., extra=FILE_ONLY): log.txt, never the console
_said = set()  # notices this process has shown on the console (`info_once`)


def info_once(message: str, *args) -> None:
  """logging.info, on the console only the first time this process says it; log.txt gets
  every one (a recipe's stages would otherwise repeat the same notice)."""
  text = message % args
  logging.info(message, *args, extra=FILE_ONLY if text in _said else None)
  _said.add(text)


def is_pipeline_line(record) -> bool:
  if getattr(record, 'file_only', False):
    return False
  return (record.levelno >= pylogging.ERROR or
          os.path.abspath(record.pathname).startswith(PACKAGE_DIR + os.sep))


class ConsoleFormatter(pylogging.Formatter):
  """'HH:MM:SS message'. A library's own error (fsspec, orbax, asyncio: often one it handles
  itself, the run going on) is one line naming the library; its traceback stays in log.txt."""

  def __init__(self):
    super().__init__('%(asctime)s %(message)s', '%H:%M:%S')

  def format(self, record) -> str:
    if os.path.abspath(record.pathname).startswith(PACKAGE_DIR + os.sep):
      return super().format(record)
    first = (record.getMessage().strip().splitlines() or [''])[0][:300]
    more = ' (details in log.txt)' if record.exc_info or '\n' in record.getMessage() else ''
    return f'{self.formatTime(record, self.datefmt)} {record.name}: {first}{more}'


def _quiet_unraisable():
  """sys.unraisablehook that keeps libraries' tracebacks off the console: an exception raised
  where nobody can catch it (a coroutine closed unfinished, a callback finding its event loop
  closed: orbax's and tensorstore's, after a failed checkpoint read from which the run falls
  back) goes to log.txt whole, and to the console as one line, once per kind."""
  def hook(unraisable):
    kind = getattr(unraisable.exc_type, '__name__', 'exception')
    try:
      where = repr(unraisable.object)[:120] if unraisable.object is not None else 'a library'
    except Exception:  # noqa: BLE001  a broken __repr__ must not bring the traceback back
      where = type(unraisable.object).__name__
    logging.info('%s in %s (raised where nobody could catch it)', kind, where,
                 exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
                 extra=FILE_ONLY)
    info_once('a library raised %s while cleaning up after itself; the run goes on (log.txt '
              'has the traceback)', kind)
  hook.quiet_unraisable = True
  return hook


def setup(workdir: str, verbose: bool = False) -> None:
  """Console handler (compact, the pipeline's lines only; with `verbose` every line in absl's
  full format) and DIR/log.txt (everything, absl's full format). Call once, at the start.
  A remote workdir's log is written to a local copy, sent up by `sync_log` (at every
  checkpoint and at the end); a resumed run, even on a new machine, appends to it."""
  global _remote_log
  log_path = files.join(workdir, 'log.txt')
  _remote_log = None
  if files.is_remote(workdir):
    _remote_log = log_path
    log_path = os.path.join(tempfile.mkdtemp(prefix='recipe_jax_log_'), 'log.txt')
    if files.exists(_remote_log):
      with open(log_path, 'wb') as f:
        f.write(files.read_bytes(_remote_log))
  else:
    os.makedirs(workdir, exist_ok=True)
  root = pylogging.getLogger()
  for handler in list(root.handlers):
    root.removeHandler(handler)
  to_file = pylogging.FileHandler(log_path)  # appends: a resumed run continues its log
  to_file.setFormatter(logging.PythonFormatter())
  to_console = pylogging.StreamHandler(sys.stderr)
  if verbose:
    to_console.setFormatter(logging.PythonFormatter())
  else:
    to_console.setFormatter(ConsoleFormatter())
    to_console.addFilter(is_pipeline_line)
  root.addHandler(to_file)
  root.addHandler(to_console)
  if not getattr(sys.unraisablehook, 'quiet_unraisable', False):
    sys.unraisablehook = _quiet_unraisable()
  root.setLevel(pylogging.INFO)
  logging.set_verbosity(logging.INFO)
  pylogging.captureWarnings(True)
  global _quiet_log_path
  _quiet_log_path = None if verbose else log_path


_quiet_log_path = None  # where TensorFlow's C++ banner goes when it is imported
_remote_log = None  # a remote workdir's log.txt, written through a local copy


def sync_log() -> None:
  """Sends the local copy of a remote workdir's log.txt up (only process 0)."""
  if _remote_log is None or not local_log():
    return
  from recipe_jax import multihost
  for handler in pylogging.getLogger().handlers:
    handler.flush()
  if multihost.is_leader():
    files.copy_local_to(local_log(), _remote_log)


def local_log() -> str | None:
  """The log.txt this process writes (a remote workdir's local copy)."""
  for handler in pylogging.getLogger().handlers:
    if isinstance(handler, pylogging.FileHandler):
      return handler.baseFilename
  return None


def import_tensorflow_quietly() -> bool:
  """Imports TensorFlow, when installed (the `tfrecord` extra), with its C++ banner, written
  straight to fd 2, sent to log.txt; whether it is there. Only TFDS data prepared as tfrecord
  needs it: the train path has no TensorFlow (~4 s of start-up)."""
  if 'tensorflow' in sys.modules:
    return True
  with stderr_into(_quiet_log_path) if _quiet_log_path else contextlib.nullcontext():
    try:
      import tensorflow  # noqa: F401
      return True
    except ImportError:
      return False


@contextlib.contextmanager
def stderr_into(path: str):
  """File descriptor 2 appends to `path` inside the block (for C++ code that bypasses Python)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, 'a') as f:
    os.dup2(f.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


MULTI_RUN_STAGES = ('compare', 'tune', 'data_scaling', 'squeeze', 'replicate', 'scale_up', 'recipe')
_one_line_per_run = {'on': False}


@contextlib.contextmanager
def one_line_per_run(on: bool = True):
  """Inside, a training run prints no step lines, only `run_ended`'s one line when it ends:
  stages made of many runs show those and their own progress (`StageProgress`)."""
  before, _one_line_per_run['on'] = _one_line_per_run['on'], on
  try:
    yield
  finally:
    _one_line_per_run['on'] = before


def run_ended(workdir: str, headline: str) -> None:
  if _one_line_per_run['on']:
    name = '/'.join(os.path.normpath(workdir).split(os.sep)[-2:])
    logging.info('run %s: %s', name, headline)


class ProgressLine:
  """One compact console line per eval, and at most every `every_s` seconds in between:
  step, percent, metrics, steps/s and the time left."""

  def __init__(self, total_steps: int, start_step: int, every_s: float = 30.0):
    self.total, self.every_s = total_steps, every_s
    self.start = (time.time(), start_step)
    self.last_line = time.time()

  def report(self, step: int, train_summary: dict, eval_metrics: dict, force: bool) -> None:
    now = time.time()
    if _one_line_per_run['on'] or (not force and now - self.last_line < self.every_s):
      return
    self.last_line = now
    rate = (step - self.start[1]) / max(now - self.start[0], 1e-9)
    left = (self.total - step) / rate if rate > 0 else float('nan')
    shown = {**train_summary, **eval_metrics}
    metrics_text = '  '.join(f'{k} {v:.4f}' for k, v in shown.items()
                             if k in ('train_loss', 'train_accuracy', 'eval_loss',
                                      'eval_accuracy'))
    logging.info('step %d/%d (%3.0f%%)  %s  %.0f steps/s  ETA %s', step, self.total,
                 100 * step / self.total, metrics_text, rate, format_seconds(left))


class StageProgress:
  """For stages made of many runs (compare, tune, data_scaling, squeeze): after each run,
  'compare: [######--------------] 3/10 runs, ETA 1:20' on a terminal, and the same without the
  bar when the console is not one (a log file, CI). The ETA counts only runs trained in this
  process, so runs reused from an earlier start do not make it optimistic."""

  def __init__(self, stage: str, total: int, unit: str = 'runs'):
    self.stage, self.total, self.unit = stage, total, unit
    self.start, self.trained = time.time(), 0

  def done(self, finished: int, trained_now: bool = True) -> None:
    self.trained += trained_now
    rate = self.trained / max(time.time() - self.start, 1e-9)
    left = (self.total - finished) / rate if self.trained else float('nan')
    bar = ''
    if sys.stderr.isatty():
      filled = int(round(20 * finished / max(self.total, 1)))
      bar = '[' + '#' * filled + '-' * (20 - filled) + '] '
    logging.info('%s: %s%d/%d %s, ETA %s', self.stage, bar, finished, self.total, self.unit,
                 format_seconds(left))


def format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'
