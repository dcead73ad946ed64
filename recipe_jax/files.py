"""A run directory's files wherever it lives: a local folder, or gs:// (any URL fsspec knows).

Every file of a run goes through here; orbax writes the checkpoints itself (through etils.epath
and tensorstore, which this module points at the same place). Local writes are atomic (a
temporary file, then a rename), so a crash never leaves half a file; an object store writes
each object whole. A GCS emulator is taken from the standard `STORAGE_EMULATOR_HOST`.
"""
import contextlib
import glob as local_glob
import io
import json
import os
import re
import shutil
import socket
import tempfile
import urllib.parse

from recipe_jax.errors import UserError


_UMASK = os.umask(0o022)  # the process's umask, read once at import (reading it means setting it)
os.umask(_UMASK)

def _configure_environment() -> None:
  """Settings the libraries below read once, before their first remote call: etils.epath
  (orbax's paths) uses gcsfs rather than TensorFlow's gfile, which would import TensorFlow
  (~4 s) and ignores an emulator; tensorstore (orbax's arrays) has its own endpoint variable;
  gcsfs's bucket-layout probe speaks gRPC, which an emulator does not."""
  os.environ.setdefault('EPATH_USE_TF', 'false')
  emulator = os.environ.get('STORAGE_EMULATOR_HOST')
  if emulator:
    os.environ.setdefault('TENSORSTORE_GCS_HTTP_URL', _with_scheme(emulator))
    os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')


def _with_scheme(host: str) -> str:
  return host if '://' in host else f'http://{host}'


_configure_environment()


def is_remote(path) -> bool:
  return '://' in str(path)


def _fs(path):
  """(fsspec filesystem, its path) for a remote path."""
  import fsspec
  protocol = str(path).split('://', 1)[0]
  options = {'use_listings_cache': False} if protocol in ('gs', 'gcs') else {}
  return fsspec.core.url_to_fs(str(path), **options)


# Tensorstore words a GCS store that does not answer in gRPC status codes, naming the URL.
_TENSORSTORE_UNANSWERED = re.compile(r'\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b.*(gs://|googleapis|'
                                     r'retry attempts failed)|retry attempts failed', re.S)


def unanswered(e: BaseException) -> BaseException | None:
  """The error behind `e` (its chain) that says the remote store did not answer: aiohttp's
  connection errors and timeouts (gcsfs, out of its retries), gcsfs's 5xx replies, tensorstore's
  UNAVAILABLE or exhausted retries on a gs:// path; or None. Only the storage libraries'
  own errors count: a ConnectionError or a DEADLINE_EXCEEDED elsewhere (a worker's pipe, JAX's
  coordination service) is not the run directory's storage."""
  import aiohttp
  from gcsfs.retry import HttpError
  seen = set()
  while e is not None and id(e) not in seen:
    if (isinstance(e, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError))
        or (isinstance(e, HttpError) and (e.code or 0) >= 500)
        or (isinstance(e, ValueError) and _TENSORSTORE_UNANSWERED.search(str(e)))):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def absolute(path) -> str:
  return str(path) if is_remote(path) else os.path.abspath(path)


def join(*parts) -> str:
  return os.path.join(*map(str, parts))


def exists(path) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  fs, p = _fs(path)
  return fs.exists(p)


def isdir(path) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  fs, p = _fs(path)
  return fs.isdir(p)


def makedirs(path) -> None:
  """A local folder; nothing on an object store, whose 'folders' are name prefixes."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path) -> list:
  """The names in a folder (empty when it does not exist)."""
  if not is_remote(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  fs, p = _fs(path)
  if not fs.exists(p):
    return []
  return sorted(os.path.basename(e.rstrip('/')) for e in fs.ls(p, detail=False))


def glob(pattern) -> list:
  if not is_remote(pattern):
    return sorted(local_glob.glob(str(pattern)))
  fs, p = _fs(pattern)
  return sorted(fs.unstrip_protocol(found) for found in fs.glob(p))


def read_bytes(path) -> bytes:
  if not is_remote(path):
    with open(path, 'rb') as f:
      return f.read()
  fs, p = _fs(path)
  return fs.cat_file(p)


def read_text(path) -> str:
  return read_bytes(path).decode('utf-8')


def read_json(path):
  """A JSON file the pipeline wrote; a damaged one (hand-edited, truncated) is a one-line
  UserError naming it, and is left as it is."""
  try:
    return json.loads(read_text(path))
  except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
    raise UserError(f'{path} is damaged ({type(e).__name__}: {e}); nothing was changed: restore '
                    'the file, or delete the run directory, or use a new --workdir') from None


def write_bytes(path, data: bytes) -> None:
  """The whole file at once: atomically on a local disk (a crash leaves the old file or the
  new one, never half of one), as one object on a store."""
  if is_remote(path):
    fs, p = _fs(path)
    fs.pipe_file(p, data)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=directory, prefix='.tmp.', delete=False) as f:
    f.write(data)
  try:
    os.chmod(f.name, 0o666 & ~_UMASK)  # a temporary file is 0600: the mode open() would give
  except OSError:  # a file system without modes (vfat): the file is still written
    pass
  os.replace(f.name, path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def write_json(path, obj, indent: int = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent))


@contextlib.contextmanager
def writing_text(path):
  """A text file object whose content is written (whole) when the block ends: for csv."""
  buffer = io.StringIO()
  yield buffer
  write_text(path, buffer.getvalue())


def remove_tree(path) -> None:
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  fs, p = _fs(path)
  if fs.exists(p):
    fs.rm(p, recursive=True)
    _forget_listings(fs)


def move(source, destination) -> None:
  """A file or folder to a new name (a copy and delete on an object store)."""
  if not is_remote(source):
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    shutil.move(source, destination)
    return
  fs, p = _fs(source)
  fs.mv(p, _fs(destination)[1], recursive=True)
  _forget_listings(fs)


def _forget_listings(fs) -> None:
  """fsspec caches directory listings in each filesystem object, and other libraries hold
  objects of their own (orbax, through etils): after a move or a delete, all of that kind
  forget theirs, so none lists what is gone (orbax saw a quarantined step as still there)."""
  for instance in list(getattr(type(fs), '_cache', {}).values()):
    instance.invalidate_cache()


def copy_local_to(local_path: str, path) -> None:
  """A local file to `path` (a log kept locally and copied up to a remote run directory)."""
  if os.path.abspath(local_path) != absolute(path):
    with open(local_path, 'rb') as f:
      write_bytes(path, f.read())


def _check_local_workdir(path: str) -> None:
  existing = os.path.abspath(os.path.expanduser(path))
  while not os.path.exists(existing):  # the nearest part of the path that exists
    existing = os.path.dirname(existing)
  if os.path.isfile(existing):
    what = 'is a file' if existing == os.path.abspath(os.path.expanduser(path)) else (
        f'lies under {existing}, which is a file')
    raise UserError(f'--workdir={path} {what}, not a directory; give a directory (a new one is '
                    'made)')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f'--workdir={path}: {existing} is not writable by this user; choose a '
                    'directory you can write')


def check_workdir(path) -> None:
  """A remote run directory must be reachable and writable before anything runs: a one-line
  UserError within seconds naming the cause (no endpoint, no bucket, no permission); a local
  one must be a directory, or a path where one can be made."""
  if not str(path).strip():
    raise UserError('--workdir is empty; give the run directory, e.g. --workdir=/tmp/run1 or '
                    'gs://BUCKET/run1')
  if not is_remote(path):
    _check_local_workdir(str(path))
    return
  scheme = str(path).split('://', 1)[0]
  if scheme in ('gs', 'gcs'):
    endpoint = _with_scheme(os.environ.get('STORAGE_EMULATOR_HOST',
                                           'https://storage.googleapis.com'))
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:  # a quick probe: gcsfs retries an unreachable endpoint for ~40 s
      socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as e:
      raise UserError(f'--workdir={path}: cannot reach the storage endpoint {endpoint} ({e}); '
                      'check the network (or STORAGE_EMULATOR_HOST for an emulator)') from None
  probe = join(path, '.recipe_jax_write_test')
  try:
    write_bytes(probe, b'ok')
    fs, p = _fs(probe)
    fs.rm(p)
  except FileNotFoundError as e:
    raise UserError(f'--workdir={path}: the bucket does not exist ({e}); create it first, e.g. '
                    f'`gcloud storage buckets create {str(path).split("/")[2]}`') from None
  except Exception as e:  # noqa: BLE001  credentials, permissions: the store's own words
    raise UserError(f'--workdir={path}: cannot write there ({type(e).__name__}: '
                    f'{(str(e).strip().splitlines() or [""])[0][:300]}); check your credentials '
                    '(gcloud auth application-default login) and the bucket\'s permissions'
                    ) from None
