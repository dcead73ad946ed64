"""An HTTP proxy in front of the GCS emulator that refuses chosen reads: the first N GETs whose
object name contains a text get 403 (an error no client retries by itself, so the pipeline's own
retry is what is tested), then it forwards again. Everything else passes through unchanged."""
import contextlib
import http.client
import http.server
import threading
import urllib.parse

HOP_BY_HOP = {'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade',
              'proxy-authenticate', 'proxy-authorization'}


class Failures:
  """What to refuse: downloads of objects whose name contains `text`, the first `times`."""

  def __init__(self):
    self.text, self.times, self.refused, self.lock = None, 0, 0, threading.Lock()

  def set(self, text: str | None, times: int = 0) -> None:
    with self.lock:
      self.text, self.times, self.refused = text, times, 0

  def refuse(self, method: str, path: str) -> bool:
    with self.lock:
      path = urllib.parse.unquote(path)
      download = 'alt=media' in path or path.startswith('/download/')
      if not (self.times and method == 'GET' and download and self.text in path):
        return False
      self.times -= 1
      self.refused += 1
      return True


def _handler(upstream: str, failures: Failures):
  target = urllib.parse.urlsplit(upstream)

  class Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
      pass

    def _forward(self):
      body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
      if failures.refuse(self.command, self.path):
        payload = b'{"error": {"code": 403, "message": "refused by the flaky proxy"}}'
        self.send_response(403)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        return
      connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
      headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
      connection.request(self.command, self.path, body=body or None, headers=headers)
      reply = connection.getresponse()
      data = reply.read()
      self.send_response(reply.status)
      for k, v in reply.getheaders():
        if k.lower() not in HOP_BY_HOP and k.lower() != 'content-length':
          self.send_header(k, v)
      self.send_header('Content-Length', str(len(data)))
      self.end_headers()
      if self.command != 'HEAD':
        self.wfile.write(data)
      connection.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward
  return Forward


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def handle_error(self, request, client_address):
    pass  # a client that hung up early (a cancelled read): nothing to report


@contextlib.contextmanager
def running(upstream: str):
  """Yields (the proxy's STORAGE_EMULATOR_HOST value, its Failures)."""
  failures = Failures()
  server = _Server(('127.0.0.1', 0), _handler(upstream, failures))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}', failures
  finally:
    server.shutdown()
    server.server_close()
