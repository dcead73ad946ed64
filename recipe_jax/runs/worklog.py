"""The worklog: every run under a folder (local or gs://), oldest first, one row each ("create a
worklog, form a mental map of the things done, and be sensitive to the file sizes, timestamps,
git diff outputs").

It reads only what run directories hold: one listing of the folder (names, sizes, times), then
each run's config.json, result.json and summary.json, and provenance.json. A run is a folder
holding config.json (a train run, a stage's folder, the runs inside compare or tune); its size
and wall time count everything under it. Runs that are writing while it reads show what they
hold so far; a file that vanishes or is half written makes its status say so, never the
worklog fail.
"""
import bisect
import datetime
import html
import json
import os

from recipe_jax import files
from recipe_jax.config import check as config_check, defaults
from recipe_jax.errors import UserError
from recipe_jax.runs import provenance, store
from recipe_jax import words

COLUMNS = ('time', 'run', 'stage', 'status', 'changed from the defaults',
           'changed from the run before', 'headline', 'checks', 'size', 'wall', 'commit')
SKIPPED_KEYS = ('stage', 'recipe.stages')  # the stage has its column


def listing(root: str) -> dict:
  """{path relative to root: (size in bytes, modification time in s)} for every file under it."""
  if files.is_remote(root):
    fs, base = files._fs(root)
    found = {}
    for path, info in fs.find(base, detail=True).items():
      updated = info.get('updated') or info.get('mtime')
      when = (datetime.datetime.fromisoformat(updated.replace('Z', '+00:00')).timestamp()
              if isinstance(updated, str) else float(updated or 0))
      found[os.path.relpath(path, base)] = (int(info.get('size') or 0), when)
    return found
  found = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      try:
        stat = os.stat(path)
      except OSError:  # removed while we walk
        continue
      found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime)
  return found


_UNREADABLE = object()  # a file listed but not readable: being written, or damaged


def _read(root: str, run: str, name: str, listed: dict, kind=dict):
  """The JSON file's content (a `kind`); None when the run has no such file; _UNREADABLE when
  it has one that cannot be read (half written, damaged, gone since the listing)."""
  if os.path.join(run, name) not in listed:
    return None
  try:
    found = files.read_json(files.join(root, run, name))
  except (UserError, OSError):
    return _UNREADABLE
  return found if isinstance(found, kind) else _UNREADABLE


def rows(root: str) -> list[dict]:
  """One dict per run under `root`, oldest first; a one-line UserError when there are none."""
  if not files.isdir(root):
    raise UserError(f'worklog: {root} is not a folder')
  listed = listing(root)
  runs = sorted(os.path.dirname(p) for p in listed if os.path.basename(p) == 'config.json')
  if not runs:
    raise UserError(f'worklog: no runs under {root} (a run is a folder holding config.json)')
  # as config.json holds them (tuples are lists there)
  default = json.loads(json.dumps(config_check.flatten(defaults.get_config())))
  paths = sorted(listed)
  found = []
  for run in runs:
    prefix = f'{run}/' if run else ''  # everything under the run, its own runs included
    inside = {p: listed[p] for p in paths[bisect.bisect_left(paths, prefix):
                                          bisect.bisect_left(paths, prefix + '\U0010ffff')]
              if os.path.basename(p) != store.REFUSALS}  # written later, by other commands
    times = [when for _, when in inside.values()]
    row = {'run': run or '.', 'time': min(times), 'wall': max(times) - min(times),
           'size': sum(size for size, _ in inside.values())}
    found.append(row)
    config = _read(root, run, 'config.json', listed)
    if config is _UNREADABLE:
      row['status'] = 'unreadable config.json (being written, or damaged)'
      continue
    flat = config_check.flatten(config)
    stage = flat.get('stage')
    # a train run's result is DIR/train/result.json; a stage's folder holds its own
    result = _read(root, run, 'train/result.json' if stage == 'train' else 'result.json', listed)
    summary = _read(root, run, 'summary.json', listed)
    record = _read(root, run, 'provenance.json', listed)
    unreadable = [name for name, value in (('result.json', result), ('summary.json', summary),
                                           ('provenance.json', record)) if value is _UNREADABLE]
    result, summary, record = (None if v is _UNREADABLE else v
                               for v in (result, summary, record))
    row.update({
        'stage': stage, 'config': flat, 'time': _started(record or {}) or row['time'],
        'status': status(summary, result, inside, run) + (
            f' ({", ".join(unreadable)} unreadable)' if unreadable else ''),
        'changed from the defaults': _changes(default, flat),
        'headline': _headline(summary, result), 'checks': _counts(result),
        'commit': _commit(record or {})})
    found += refusals(root, run, listed)
  found.sort(key=lambda r: (r['time'], r['run']))
  previous = None
  for row in found:
    if 'config' in row:
      row['changed from the run before'] = (_changes(previous, row['config']) if previous
                                            else '')
      previous = row['config']
  return found


def refusals(root: str, run: str, listed: dict) -> list[dict]:
  """A row for each start refused in `run` (another config or other data: `store.REFUSALS`)."""
  noted = _read(root, run, store.REFUSALS, listed, list)
  if noted is None:
    return []
  if noted is _UNREADABLE:
    return [{'run': run or '.', 'time': listed[os.path.join(run, store.REFUSALS)][1],
             'status': f'refused (unreadable {store.REFUSALS})'}]
  found = []
  for refusal in noted:
    reason = ' '.join(str(refusal.get('reason', '')).split())
    reason = reason.split(': ', 1)[-1].split('. Nothing was changed')[0]
    when = refusal.get('timestamp')
    found.append({'run': run or '.', 'time': when if isinstance(when, (int, float)) else
                  _started(refusal) or 0.0,
                  'status': f'refused: {reason[:100]}{"..." if len(reason) > 100 else ""}'})
  return found


def status(summary, result, inside: dict, run: str) -> str:
  """finished; preempted (stopped, resumable); failed (a check FAILed, the first one named: a
  diverged run's `finished`); or running or killed (no result yet). A stage's result.json is
  written last, so it speaks first; a run trained inside a stage has only summary.json."""
  if result is not None:
    if not result.get('finished', True):
      return 'preempted'
    failed = [v for v in result.get('verdicts', []) if v.get('status') == 'FAIL']
    if failed:
      first = ' '.join(words.sentence(failed[0]).split())  # one line in a table
      return f"failed: {failed[0].get('check')}: {first[:60]}{'...' if len(first) > 60 else ''}"
    return 'finished'
  if summary is not None:
    return 'finished' if summary.get('finished') else 'preempted'
  prefix = f'{run}/checkpoints/' if run else 'checkpoints/'
  if any(p.startswith(prefix) for p in inside):
    return 'running or killed (checkpoints, no summary)'
  return 'running or killed (no result)'


def _started(record: dict):
  try:
    return datetime.datetime.strptime(record['time'], provenance.TIME_FORMAT).timestamp()
  except (KeyError, TypeError, ValueError):
    return None


def _changes(before: dict, after: dict) -> str:
  keys = sorted(k for k in set(before) | set(after) if k not in SKIPPED_KEYS and
                before.get(k) != after.get(k))
  return ', '.join(f'{k}={after.get(k)!r}' if isinstance(after.get(k), str) else
                   f'{k}={after.get(k)}' for k in keys)


def _headline(summary, result) -> str:
  if result and result.get('metrics'):
    return words.headline(result['metrics'])
  if summary:
    return words.headline({k: summary.get(k) for k in ('test_accuracy', 'eval_accuracy', 'step')})
  return ''


def _counts(result) -> str:
  if not result:
    return ''
  statuses = [v.get('status') for v in result.get('verdicts', [])]
  return ' '.join(f'{statuses.count(s)} {s}' for s in ('PASS', 'WARN', 'FAIL'))


def _commit(record: dict) -> str:
  for repo in record.get('code', []):
    git = repo.get('git')
    if git and git.get('commit'):
      return git['commit'][:10] + ('+diff' if git.get('diff_file') else '')
  return ''


def cells(row: dict) -> list[str]:
  time = datetime.datetime.fromtimestamp(row['time']).strftime('%Y-%m-%d %H:%M:%S')
  return [time, row['run'], str(row.get('stage') or ''), row['status'],
          row.get('changed from the defaults', ''), row.get('changed from the run before', ''),
          row.get('headline', ''), row.get('checks', ''), _size(row.get('size', 0)),
          f"{row.get('wall', 0):.0f} s", row.get('commit', '')]


def _size(size: int) -> str:
  for unit in ('B', 'KB', 'MB', 'GB'):
    if size < 1024 or unit == 'GB':
      return f'{size:.0f} {unit}' if unit == 'B' else f'{size:.1f} {unit}'
    size /= 1024


def markdown(found: list) -> str:
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(c.replace('|', '\\|') for c in cells(r)) + ' |' for r in found]
  return '\n'.join(lines) + '\n'


def as_html(found: list, root: str) -> str:
  head = ''.join(f'<th>{html.escape(c)}</th>' for c in COLUMNS)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in cells(r)) + '</tr>'
                 for r in found)
  return (f'<!doctype html><meta charset="utf-8"><title>worklog: {html.escape(root)}</title>'
          '<style>body{font-family:sans-serif} table{border-collapse:collapse;font-size:13px}'
          'td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}</style>'
          f'<h1>worklog</h1><p>{html.escape(root)}: {len(found)} runs, oldest first</p>'
          f'<table><tr>{head}</tr>{body}</table>\n')
