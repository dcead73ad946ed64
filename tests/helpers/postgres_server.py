"""A throwaway PostgreSQL server for tests: its own data directory, a free port on localhost,
stopped and removed afterwards. Debian's `postgresql` package provides the binaries."""
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


def binary(name: str) -> str | None:
  found = shutil.which(name) or sorted(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'))
  return found if isinstance(found, str) else (found[-1] if found else None)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


_control = {}  # url -> {'stop': ..., 'start': ...} of the servers running now


def stop(url: str) -> None:
  """Stops the server at once (as a crash or a lost network would), keeping its data."""
  _control[url]['stop']()


def start(url: str) -> None:
  """Starts a stopped server again, with the data it had."""
  _control[url]['start']()


@contextlib.contextmanager
def running_server():
  """Yields a SQLAlchemy URL of a fresh database. As root, the server runs as the `postgres`
  user (initdb refuses root)."""
  initdb, pg_ctl = binary('initdb'), binary('pg_ctl')
  as_user = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
  directory = tempfile.mkdtemp(prefix='recipe_jax_pg_')
  if as_user:
    shutil.chown(directory, 'postgres')
  data, port = os.path.join(directory, 'data'), free_port()
  run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)
  try:
    run(initdb, '-D', data, '-U', 'postgres', '--auth=trust')
    run(pg_ctl, '-D', data, '-l', os.path.join(directory, 'log'), '-w', '-o',
        f'-p {port} -k {directory} -c listen_addresses=127.0.0.1', 'start')
    try:
      deadline = time.time() + 30
      while subprocess.run([binary('pg_isready'), '-h', '127.0.0.1', '-p', str(port)],
                           capture_output=True).returncode and time.time() < deadline:
        time.sleep(0.2)
      run(binary('createdb'), '-h', '127.0.0.1', '-p', str(port), '-U', 'postgres', 'tune')
      url = f'postgresql+psycopg://postgres@127.0.0.1:{port}/tune'
      _control[url] = {
          'stop': lambda: run(pg_ctl, '-D', data, '-m', 'immediate', '-w', 'stop'),
          'start': lambda: run(pg_ctl, '-D', data, '-l', os.path.join(directory, 'log'), '-w',
                               '-o', f'-p {port} -k {directory} -c listen_addresses=127.0.0.1',
                               'start')}
      yield url
    finally:
      _control.pop(f'postgresql+psycopg://postgres@127.0.0.1:{port}/tune', None)
      subprocess.run([*as_user, pg_ctl, '-D', data, '-m', 'fast', '-w', 'stop'],
                     capture_output=True)  # already stopped by a test: nothing to do
  finally:
    shutil.rmtree(directory, ignore_errors=True)
