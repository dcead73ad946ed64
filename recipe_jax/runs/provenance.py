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

A restart compares its code and versions with those the run last went on with. What differs is
logged (a bit-identical
resume needs the same code) and appended to the record's `restarts`, never refused; the same code
writes nothing.
"""
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
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
_started = {'command': None, 'config_file': None}


def started_by(argv: list, config_file: str | None) -> None:
  """What started this process (main calls it): recorded with every run it claims."""
  _started['command'] = ' '.join(['python -m recipe_jax.main', *argv[1:]])
  _started['config_file'] = os.path.abspath(config_file) if config_file else None


def code_folders(config) -> list[str]:
  """The folders of the code a run uses: this package, the config file, a user model or loss."""
  folders = [os.path.dirname(os.path.abspath(__file__))]
  if _started['config_file']:
    folders.append(os.path.dirname(_started['config_file']))
  for name in (config.model.name, config.get('loss', '')):
    if name and user_code.is_user_code(name):
      origin = _module_file(name.partition(':')[0])
      if origin:
        folders.append(os.path.dirname(origin))
  return folders


def _module_file(module: str) -> str | None:
  try:
    spec = importlib.util.find_spec(module)
  except (ImportError, ValueError):
    return None
  return spec.origin if spec and spec.origin and os.path.exists(spec.origin) else None


def _git(folder: str, *args) -> str | None:
  try:
    done = subprocess.run(['git', '-C', folder, *args], capture_output=True, text=True,
                          timeout=GIT_TIMEOUT_S)
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
  seen, code = set(), []
  for folder in code_folders(config):
    repo = repository(folder)
    if repo['path'] not in seen:
      seen.add(repo['path'])
      code.append(repo)
  return {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'command': _started['command'] or
          ' '.join(sys.argv), 'code': code, 'versions': versions(), 'host': socket.gethostname(),
          'devices': {'platform': devices[0].platform, 'kind': devices[0].device_kind,
                      'count': len(devices)}, 'processes': jax.process_count()}


def identity(record: dict) -> dict:
  """What must match for a bit-identical resume: each repository's commit and diff, versions."""
  code = {r['path']: (r['git'] or {}).get('commit') for r in record['code']}
  diffs = {r['path']: (r['git'] or {}).get('diff_sha256') for r in record['code']}
  return {'code': code, 'diffs': diffs, 'versions': record['versions']}


def record(directory: str, config) -> None:
  """Writes the record of a fresh run directory; on a restart, logs (and appends) what differs
  from it. Only process 0 calls it (`store.claim`)."""
  path = files.join(directory, FILE)
  now = collect(config)
  if not files.exists(path):
    files.write_json(path, _with_diffs_saved(directory, now))
    return
  try:
    before = files.read_json(path)
    latest = (before.get('restarts') or [before])[-1]  # the code the run last went on with
    changes = differences(identity(latest), identity(now))
  except (UserError, KeyError, TypeError, AttributeError):  # damaged, or hand-edited
    logging.warning('%s is damaged: this start is not compared with it', path)
    return
  if changes:
    logging.warning('%s: the code differs from the run it continues: %s (a bit-identical resume '
                    'needs the same code; recorded in %s)', directory, '; '.join(changes), FILE)
    before.setdefault('restarts', []).append(_with_diffs_saved(directory, now))
    files.write_json(path, before)


def differences(before: dict, now: dict) -> list[str]:
  """Words for each difference between two `identity`s."""
  found = []
  for path in sorted(set(before['code']) | set(now['code'])):
    name = os.path.basename(path)
    old, new = before['code'].get(path), now['code'].get(path)
    if path not in before['code'] or path not in now['code']:
      found.append(f'{name}: {"no longer used" if path not in now["code"] else "now used"}')
    elif old != new:
      found.append(f'{name}: commit {(old or "none")[:10]} -> {(new or "none")[:10]}')
    elif before['diffs'].get(path) != now['diffs'].get(path):
      found.append(f'{name}: other uncommitted changes')
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
