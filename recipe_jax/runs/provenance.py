"""Which code made a run: `provenance.json` beside a run's `config.json` ("be sensitive to
the file sizes, timestamps, git diff outputs").

Recorded when a run directory is first claimed (`store.claim`):
- `code`: every repository that holds code the run used (this project, the config file, a user
  model or loss module): its top folder, git commit, branch, whether it is dirty, the untracked
  files, and the uncommitted diff, saved as `provenance/<repository>.diff`. A folder outside git
  is recorded with `"git": null`;
- `versions` of Python, jax, jaxlib, flax, optax, orbax-checkpoint and recipe_jax;
- `host`, the `devices` (platform, kind, count) and the process count;
- the `command` line that started it.

A restart (or a stage reusing the folder's results) compares its code, by role, and versions
with those the run last went on with. What differs is logged (a bit-identical resume needs the
same code) and appended to the record's `restarts`, never refused; the same code writes nothing.
Provenance never stops a run: a failure to record it is one warning.
"""
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import socket
import subprocess
import sys
import time

from absl import logging

from recipe_jax import files
from recipe_jax.errors import UserError
from recipe_jax.model import user_code

FILE = 'provenance.json'
DIFFS = 'provenance'  # the folder of the uncommitted diffs
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'recipe_jax')
GIT_TIMEOUT_S = 10
TIME_FORMAT = '%Y-%m-%dT%H:%M:%S%z'  # the record's start time (the worklog reads it back)
_started = {'command': None, 'config_file': None}


def started_by(argv: list, config_file: str | None) -> None:
  """What started this process (main calls it): recorded with every run it claims."""
  _started['command'] = 'python -m recipe_jax.main ' + shlex.join(argv[1:])
  _started['config_file'] = os.path.abspath(config_file) if config_file else None


def code_folders(config) -> list[tuple[str, str]]:
  """(role, folder) of the code a run uses: this package ('recipe_jax'), the config file
  ('config'), a user model ('model') or loss ('loss')."""
  folders = [('recipe_jax', os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
  if _started['config_file']:
    folders.append(('config', os.path.dirname(_started['config_file'])))
  for role, name in (('model', config.model.name), ('loss', config.get('loss', ''))):
    if name and user_code.is_user_code(name):
      origin = _module_file(name.partition(':')[0])
      if origin:
        folders.append((role, os.path.dirname(origin)))
  return folders


def _module_file(module: str) -> str | None:
  try:
    spec = importlib.util.find_spec(module)
  except Exception:  # noqa: BLE001  a package whose __init__ fails: the run says so itself
    return None
  return spec.origin if spec and spec.origin and os.path.exists(spec.origin) else None


def _git(folder: str, *args) -> str | None:
  try:
    done = subprocess.run(['git', '-C', folder, *args], capture_output=True, encoding='utf-8',
                          errors='replace', timeout=GIT_TIMEOUT_S)  # a Latin-1 file's diff too
  except (OSError, subprocess.TimeoutExpired):  # no git on this machine, or a stuck one
    return None
  return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=32)
def repository(folder: str) -> dict:
  """{'path', 'git': {commit, branch, dirty, untracked, diff, diff_sha256}} of the repository
  holding `folder`, or {'path': folder, 'git': None} outside git. Asked once per process: the
  code a process runs is what it imported, whatever is edited later."""
  top = _git(folder, 'rev-parse', '--show-toplevel')
  if top is None:
    return {'path': folder, 'git': None}
  top = top.strip()
  status = _git(top, 'status', '--porcelain') or ''
  diff = _git(top, 'diff', 'HEAD', '--no-color', '--no-ext-diff') or ''
  return {'path': top, 'git': {
      'commit': (_git(top, 'rev-parse', 'HEAD') or '').strip() or None,  # None: no commit yet
      'branch': (_git(top, 'rev-parse', '--abbrev-ref', 'HEAD') or '').strip() or None,
      'dirty': bool(status.strip()),
      'untracked': [line[3:] for line in status.splitlines() if line.startswith('??')][:100],
      'diff': diff, 'diff_sha256': hashlib.sha256(diff.encode()).hexdigest() if diff else None}}


@functools.cache
def versions() -> dict:
  found = {'python': platform.python_version()}
  for package in PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def collect(config) -> dict:
  """The record of what runs now (the diffs still inside: `record` writes them apart)."""
  import jax
  devices = jax.devices()
  code = {}
  for role, folder in code_folders(config):
    repo = repository(folder)
    code.setdefault(repo['path'], dict(repo, roles=[]))['roles'].append(role)
  return {'time': time.strftime(TIME_FORMAT), 'command': _started['command'] or
          shlex.join(sys.argv), 'code': list(code.values()), 'versions': versions(),
          'host': socket.gethostname(), 'devices': {
              'platform': devices[0].platform, 'kind': devices[0].device_kind,
              'count': len(devices)}, 'processes': jax.process_count()}


def identity(record: dict) -> dict:
  """What must match for a bit-identical resume: the commit and the uncommitted diff behind
  each role (by role, not path: the same checkout may sit elsewhere on another VM), and the
  versions."""
  code, diffs = {}, {}
  for repo in record['code']:
    roles = '+'.join(repo.get('roles') or [repo['path']])  # 'config+model': one repository
    code[roles] = (repo['git'] or {}).get('commit')
    diffs[roles] = (repo['git'] or {}).get('diff_sha256')
  return {'code': code, 'diffs': diffs, 'versions': record['versions']}


def record(directory: str, config) -> None:
  """Writes the record of a fresh run directory; on a restart (or a reuse of its results),
  logs and appends what differs from the code it last ran with. Only process 0 calls it
  (`store.claim`). Provenance never stops a run: a failure is one warning."""
  try:
    _record(directory, config)
  except Exception as e:  # noqa: BLE001  but a store that stopped answering ends the run
    if files.unanswered(e):
      raise
    logging.warning('%s: provenance not recorded (%s)', directory, user_code.one_line(e))


def _record(directory: str, config) -> None:
  path = files.join(directory, FILE)
  now = collect(config)
  if not files.exists(path):
    files.write_json(path, _with_diffs_saved(directory, now))
    return
  try:
    before = files.read_json(path)
    restarts = before.setdefault('restarts', [])
    latest = (restarts or [before])[-1]  # the code the run last went on with
    changes = differences(identity(latest), identity(now))
  except (UserError, KeyError, TypeError, AttributeError):  # damaged, or hand-edited
    logging.warning('%s is damaged: this start is not compared with it', path)
    return
  if changes:
    logging.warning('%s: the code differs from the code it last ran with: %s (a bit-identical '
                    'resume needs the same code; recorded in %s)', directory, '; '.join(changes),
                    FILE)
    restarts.append(_with_diffs_saved(directory, now))
    files.write_json(path, before)


def differences(before: dict, now: dict) -> list[str]:
  """Words for each difference between two `identity`s."""
  found = []
  for role in sorted(set(before['code']) | set(now['code'])):
    old, new = before['code'].get(role), now['code'].get(role)
    if role not in before['code'] or role not in now['code']:
      found.append(f'{role}: {"no longer used" if role not in now["code"] else "now used"}')
    elif old != new:
      found.append(f'{role}: commit {(old or "none")[:10]} -> {(new or "none")[:10]}')
    elif before['diffs'].get(role) != now['diffs'].get(role):
      found.append(f'{role}: other uncommitted changes')
  for package in sorted(set(before['versions']) | set(now['versions'])):
    old, new = before['versions'].get(package), now['versions'].get(package)
    if old != new:
      found.append(f'{package} {old} -> {new}')
  return found


def describe_code(repo: dict, directory: str) -> str:
  """One repository of a record as HTML: its folder, commit, branch and uncommitted diff."""
  import html
  where = html.escape(repo['path'])
  git = repo['git']
  if not git:
    return f'{where} (outside git)'
  words = f'{where} at <code>{html.escape((git["commit"] or "no commit")[:10])}</code>'
  words += f' ({html.escape(git["branch"])})' if git.get('branch') else ''
  if git.get('diff_file'):
    words += (f', with uncommitted changes: <a href="{html.escape(directory)}/'
              f'{html.escape(git["diff_file"])}">{html.escape(git["diff_file"])}</a>')
  elif git.get('dirty'):
    words += ', with untracked files'
  return words


def _with_diffs_saved(directory: str, now: dict) -> dict:
  """`now` with each diff written to DIFFS/<repository>[-<n>].diff and replaced by its name."""
  saved = dict(now, code=[])
  for repo in now['code']:
    repo = dict(repo)
    if repo['git']:
      repo['git'] = dict(repo['git'])
      diff = repo['git'].pop('diff')
      if diff:
        name = f'{os.path.basename(repo["path"])}-{repo["git"]["diff_sha256"][:12]}.diff'
        files.write_text(files.join(directory, DIFFS, name), diff)
        repo['git']['diff_file'] = f'{DIFFS}/{name}'
    saved['code'].append(repo)
  return saved
