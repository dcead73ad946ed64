"""Opens a page in Debian's headless Chromium and reports what happened, through the DevTools
protocol over a pipe (--remote-debugging-pipe: JSON messages ending in NUL on fds 3 and 4), so
no browser-driver package is needed.
"""
import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time


def chromium() -> str | None:
  return shutil.which('chromium') or shutil.which('chromium-browser')


class _Pipe:
  def __init__(self, to_browser, from_browser):
    self.to_browser, self.from_browser = to_browser, from_browser
    self.buffer, self.next_id, self.events = b'', 0, []

  def send(self, method, params=None, session=None, timeout=60):
    self.next_id += 1
    message = {'id': self.next_id, 'method': method, 'params': params or {}}
    if session:
      message['sessionId'] = session
    os.write(self.to_browser, json.dumps(message).encode() + b'\0')
    deadline = time.time() + timeout
    while time.time() < deadline:
      reply = self._read()
      if reply.get('id') == self.next_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply.get('result', {})
      self.events.append(reply)
    raise TimeoutError(method)

  def wait_for(self, method, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if any(e.get('method') == method for e in self.events):
        return
      self.events.append(self._read())
    raise TimeoutError(method)

  def _read(self):
    while b'\0' not in self.buffer:
      chunk = os.read(self.from_browser, 1 << 20)
      if not chunk:
        raise RuntimeError('chromium closed the DevTools pipe')
      self.buffer += chunk
    message, self.buffer = self.buffer.split(b'\0', 1)
    return json.loads(message)


def open_page(path: str, screenshot: str, expression: str, width: int = 1200,
              ready: str | None = None, timeout_s: float = 30.0) -> dict:
  """Loads file `path` (or an http:// URL), evaluates `expression` after the load event (and,
  for a page that renders later, once the expression `ready` is true), saves a full-page PNG.
  Returns {'value', 'requests' (URLs other than file: and data:), 'console_errors'}."""
  # The protocol's fixed descriptors are 3 (commands in) and 4 (replies out). bash puts our pipe
  # ends there, so no Python runs in the forked child of this multithreaded process (dash takes
  # single-digit descriptors only). The ends are first moved above 9, so that the redirections
  # cannot overwrite each other.
  to_browser_r, to_browser_w = os.pipe()
  from_browser_r, from_browser_w = os.pipe()
  child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
  child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
  for fd in (to_browser_r, from_browser_w):
    os.close(fd)
  profile = tempfile.mkdtemp(prefix='chromium-profile-')
  proc = subprocess.Popen(
      ['bash', '-c', f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-',
       chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe',
       f'--user-data-dir={profile}', '--no-first-run', '--disable-extensions',
       '--disable-background-networking', '--disable-component-update', 'about:blank'],
      pass_fds=(child_in, child_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  os.close(child_in)
  os.close(child_out)
  pipe = _Pipe(to_browser_w, from_browser_r)
  try:
    target = pipe.send('Target.createTarget', {'url': 'about:blank'})['targetId']
    session = pipe.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
    for domain in ('Network', 'Runtime', 'Log', 'Page'):
      pipe.send(f'{domain}.enable', session=session)
    pipe.send('Emulation.setDeviceMetricsOverride', {'width': width, 'height': 900,
                                                     'deviceScaleFactor': 1, 'mobile': False},
              session=session)
    url = path if path.startswith('http') else 'file://' + os.path.abspath(path)
    pipe.send('Page.navigate', {'url': url}, session=session)
    pipe.wait_for('Page.loadEventFired')
    deadline = time.time() + timeout_s
    while ready and time.time() < deadline and not pipe.send(
        'Runtime.evaluate', {'expression': ready, 'returnByValue': True},
        session=session)['result'].get('value'):
      time.sleep(0.2)
    value = pipe.send('Runtime.evaluate', {'expression': expression, 'returnByValue': True},
                      session=session)['result'].get('value')
    height = pipe.send('Runtime.evaluate', {'expression': 'document.body.scrollHeight',
                                            'returnByValue': True}, session=session)
    shot = pipe.send('Page.captureScreenshot', {
        'format': 'png', 'captureBeyondViewport': True,
        'clip': {'x': 0, 'y': 0, 'width': width, 'height': height['result']['value'],
                 'scale': 1}}, session=session)
    with open(screenshot, 'wb') as f:
      f.write(base64.b64decode(shot['data']))
  finally:
    proc.kill()
    proc.wait()
    shutil.rmtree(profile, ignore_errors=True)
  events = pipe.events
  requests = [e['params']['request']['url'] for e in events
              if e.get('method') == 'Network.requestWillBeSent'
              and not e['params']['request']['url'].startswith(('file:', 'data:'))]
  errors = [e['params'] for e in events
            if (e.get('method') == 'Runtime.consoleAPICalled' and e['params']['type'] == 'error')
            or e.get('method') == 'Runtime.exceptionThrown'
            or (e.get('method') == 'Log.entryAdded' and e['params']['entry']['level'] == 'error')]
  return {'value': value, 'requests': requests, 'console_errors': errors}
