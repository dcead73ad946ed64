"""One self-contained report.html for a workdir: every stage's result.json, verdicts first.

  python -m recipe_jax.report.html DIR      (also: python -m recipe_jax.report.results DIR)

Images are inlined (base64), there is no script or stylesheet from elsewhere, so the file reads
offline and can be attached to a bug report. Works for a single stage's workdir and for a
recipe's (stages in DIR/<stage>/).
"""
import base64
import html
import json
import os
import sys

from recipe_jax import files
from recipe_jax.config import check as config_check
from recipe_jax.report import advice
from recipe_jax import words

# Pictures of many examples each: folded under their verdict, one click away.
EXAMPLE_GRIDS = ('samples_per_class.png', 'class_means.png', 'inputs_before_net.png',
                 'overfit_predictions.png')
STATUS_COLOURS = {'PASS': '#1a7f37', 'WARN': '#9a6700', 'FAIL': '#cf222e'}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1f2328;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em;
margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; }
th { background: #f6f8fa; }
.badge { color: white; border-radius: 0.3em; padding: 0.05em 0.45em; font-weight: 600;
         font-size: 0.85em; }
.verdict { margin: 0.9em 0; } .check { font-weight: 600; font-family: monospace; }
details pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; font-size: 0.8em;
              max-height: 24em; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 0.3em 0; display: block; }
code { background: #f6f8fa; padding: 0.1em 0.3em; }
.headline { font-size: 1.1em; }
"""
# Not a network request: it only records, on the page, how many images decoded (tests read it).
SELF_CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesLoaded =
      images.filter(i => i.complete && i.naturalWidth > 0).length + '/' + images.length;
});
</script>"""


def find_results(workdir: str) -> list:
  """[(stage workdir, result dict)] for DIR/<stage>/result.json and, in a recipe's workdir,
  DIR/<stage>/<stage>/result.json; in recipe order where there is one."""
  found = []
  for path in sorted(files.glob(files.join(workdir, '*', 'result.json'))
                     + files.glob(files.join(workdir, '*', '*', 'result.json'))):
    result = files.read_json(path)
    stage_dir = os.path.dirname(os.path.dirname(path))
    if os.path.basename(os.path.dirname(path)) == result['stage']:
      found.append((stage_dir, result))
  order = {s: i for i, s in enumerate(config_check.STAGES)}
  return sorted(found, key=lambda item: (order.get(item[1]['stage'], len(order)), item[0]))


def render(workdir: str) -> str:
  results = find_results(workdir)
  config = _run_config(workdir, results)
  parts = [f'<h1>recipe_jax report</h1><p>{html.escape(files.absolute(workdir))}</p>',
           _headline(config, results), _stage_table(results), _advice([r for _, r in results]),
           _commands(workdir, results)]
  for stage_dir, result in results:
    if result['stage'] != 'recipe':
      parts.append(_stage_section(stage_dir, result))
  body = '\n'.join(parts)
  return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
          f'<title>recipe_jax report</title><style>{STYLE}</style></head>'
          f'<body>{body}{SELF_CHECK}</body></html>')


def write(workdir: str) -> str:
  """Writes DIR/report.html (atomically; in a multi-host job only process 0) and returns its
  path."""
  from recipe_jax import multihost
  path = os.path.join(workdir, 'report.html')
  if not multihost.is_leader():
    return path
  files.write_text(path, render(workdir))
  return path


def _run_config(workdir: str, results: list) -> dict:
  """The config of what ran in workdir: the recipe's (DIR/recipe/config.json), a train run's
  (DIR/config.json), else the first stage's (main writes DIR/<stage>/config.json)."""
  candidates = [os.path.join(workdir, 'recipe', 'config.json'),
                os.path.join(workdir, 'config.json')]
  candidates += [os.path.join(stage_dir, r['stage'], 'config.json') for stage_dir, r in results]
  for path in candidates:
    found = _read_json(path)
    if found:
      return found
  return {}


def _read_json(path: str):
  return files.read_json(path) if files.exists(path) else None


def _badge(status: str, text: str | None = None) -> str:
  return (f'<span class="badge" style="background:{STATUS_COLOURS[status]}">'
          f'{html.escape(text or status)}</span>')


def _count(status: str, count: int) -> str:
  if not count:
    return '<span class="badge" style="background:#8c959f">0</span>'
  return _badge(status, str(count))


def _headline(config: dict, results: list) -> str:
  """The run in one paragraph: data, model, seed; the final test accuracy against the dumb
  baselines and the human one."""
  model, dataset = config.get('model', {}).get('name'), config.get('dataset', {}).get('name')
  metrics = {r['stage']: r['metrics'] for _, r in results}
  final = words.final_accuracy(metrics)
  rows = [(f'test accuracy of {final[0]}', final[1])] if final else []
  sanity = metrics.get('sanity', {})
  rows += [('model after the sanity run (validation accuracy)', sanity.get('model_val_accuracy')),
           ('zero-input baseline (validation accuracy)', sanity.get('zero_input_val_accuracy')),
           ('human baseline (accuracy)', config.get('human_baseline'))]
  cells = ''.join(f'<tr><th>{html.escape(name)}</th><td>{words.number(value, "accuracy")}</td>'
                  '</tr>' for name, value in rows if value is not None)
  return (f'<p class="headline">{html.escape(str(model))} on {html.escape(str(dataset))}, seed '
          f'{config.get("seed")}</p><table>{cells}</table>')


def _stage_table(results: list) -> str:
  """One row per stage: its checks' counts and its headline in words. The recipe's own result
  (a verdict per stage) is the table itself, so it gets no row."""
  rows, note = [], ''
  for _, r in results:
    if r['stage'] == 'recipe':
      if not r.get('finished', True):
        note = ('<p><b>The recipe stopped, resumable</b> (SIGTERM or Ctrl-C): the same command '
                'continues where it stopped.</p>')
      continue
    counts = r.get('counts', {})
    state = 'finished' if r.get('finished', True) else 'stopped, resumable'
    numbers = words.headline(r['metrics'])
    rows.append(f'<tr><td><a href="#{r["stage"]}">{r["stage"]}</a></td><td>{state}</td>'
                + ''.join(f'<td>{_count(s, counts.get(s, 0))}</td>' for s in STATUS_COLOURS)
                + f'<td>{html.escape(numbers)}</td></tr>')
  return (note + '<table><tr><th>stage</th><th>state</th><th>PASS</th><th>WARN</th><th>FAIL</th>'
          f'<th>headline</th></tr>{"".join(rows)}</table>')


def _advice(results: list) -> str:
  """Next steps, then one act-or-ignore line for every WARN and FAIL (`advice`)."""
  steps = ''.join(f'<li>{html.escape(step)}</li>' for step in advice.next_steps(results))
  out = [f'<h2 id="next-steps">Next steps</h2><ol class="next">{steps}</ol>']
  found = advice.lines(results)
  if found:
    items = ''.join(
        f'<li>{_badge(status)} <a href="#{stage}">{html.escape(stage)}</a> '
        f'<span class="check">{html.escape(check)}</span>: <b>{"act" if act else "ignore"}</b>'
        f' &mdash; {html.escape(why)}</li>' for stage, check, status, act, why in found)
    out.append(f'<h3>Every WARN and FAIL: act or ignore</h3><ul class="advice">{items}</ul>')
  return ''.join(out)


def _commands(workdir: str, results: list) -> str:
  command = os.path.join(workdir, 'command.txt')
  if not files.exists(command):
    return ''
  line = files.read_text(command).strip()
  items = [f'<li><code>{html.escape(line)}</code> (everything; a finished stage is reused)</li>']
  if any(r['stage'] == 'recipe' for _, r in results):
    items += [f'<li><code>{html.escape(line)} --config.recipe.stages={r["stage"]} '
              f'--config.recipe.rerun={r["stage"]}</code> (redoes {r["stage"]}: the earlier '
              'results are kept beside it)</li>'
              for _, r in results if r['stage'] != 'recipe']
  return f'<h3>Reproduce</h3><ul>{"".join(items)}{_provenance(workdir, results)}</ul>'


def _provenance(workdir: str, results: list) -> str:
  """The code and versions the run came from (runs/provenance.py), as list items."""
  from recipe_jax.runs import provenance
  stages = [r['stage'] for _, r in results]
  for folder in (workdir, *(os.path.join(workdir, s) for s in ('recipe', *stages))):
    path = os.path.join(folder, provenance.FILE)
    if files.exists(path):
      break
  else:
    return ''
  try:
    record = files.read_json(path)
    here = os.path.relpath(folder, workdir)  # links relative to report.html
    items = [f'<li>code: {provenance.describe_code(repo, here)}</li>' for repo in record['code']]
    versions = ', '.join(f'{k} {v}' for k, v in record['versions'].items() if v)
    devices = record['devices']
    items.append(f'<li>{html.escape(versions)}; {devices["count"]} x {html.escape(devices["kind"])}'
                 f' on {html.escape(record["host"])}, {html.escape(record["time"])}</li>')
  except Exception:  # noqa: BLE001  informational: a damaged record never stops the report
    return f'<li>{html.escape(path)} is damaged</li>'
  return ''.join(items)


def _stage_section(stage_dir: str, result: dict) -> str:
  stage = result['stage']
  out = [f'<h2 id="{stage}">{html.escape(stage)}</h2>']
  images = result.get('images', {})
  shown = set()
  for v in result['verdicts']:
    evidence = json.dumps(v.get('evidence', {}), indent=1, default=str)
    if len(evidence) > 20000:
      evidence = evidence[:20000] + '\n... (truncated; the whole of it is in verdicts.json)'
    own = images.get(v['check'], [])
    pictures = _pictures(stage_dir, own)
    shown.update(own)
    out.append(f'<div class="verdict">{_badge(v["status"])} <span class="check">'
               f'{html.escape(v["check"])}</span>: {html.escape(words.sentence(v))}'
               f'<details><summary>evidence</summary><pre>{html.escape(evidence)}</pre>'
               f'</details>{pictures}</div>')
  for name in result.get('files', []):
    path = os.path.join(stage_dir, name)
    if name.endswith('.md') and not name.endswith('report.md') and files.exists(path):
      out.append(f'<h4>{html.escape(name)}</h4>{markdown_tables(files.read_text(path))}')
    elif name.endswith('.png') and name not in shown and files.exists(path):
      out.append(f'<h4>{html.escape(name)}</h4>{_image(path)}')
  return '\n'.join(out)


def _pictures(stage_dir: str, paths: list) -> str:
  """A verdict's pictures; those of many examples each (EXAMPLE_GRIDS) folded, so they do not
  push the verdicts below them down the page."""
  grids = [p for p in paths if os.path.basename(p) in EXAMPLE_GRIDS]
  out = ''.join(_image(os.path.join(stage_dir, p)) for p in paths if p not in grids)
  if grids:
    names = html.escape(', '.join(map(os.path.basename, grids)))
    out += (f'<details><summary>examples: {names}</summary>'
            + ''.join(_image(os.path.join(stage_dir, p)) for p in grids) + '</details>')
  return out


def _image(path: str) -> str:
  if not files.exists(path):
    return f'<p>(missing picture: {html.escape(path)})</p>'
  data = base64.b64encode(files.read_bytes(path)).decode('ascii')
  return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def markdown_tables(text: str) -> str:
  """The pipe tables of a results.md as HTML tables (other lines as paragraphs)."""
  out, table = [], []

  def flush():
    if table:
      header, *rows = [row for row in table if not set(row.replace('|', '').strip()) <= {'-'}]
      cells = lambda row, tag: ''.join(f'<{tag}>{html.escape(c.strip())}</{tag}>'
                                       for c in row.strip().strip('|').split('|'))
      out.append('<table><tr>' + cells(header, 'th') + '</tr>'
                 + ''.join(f'<tr>{cells(r, "td")}</tr>' for r in rows) + '</table>')
      table.clear()

  for line in text.splitlines():
    if line.startswith('|'):
      table.append(line)
      continue
    flush()
    if line.strip() and not line.startswith('!['):
      out.append(f'<p>{html.escape(line.lstrip("# "))}</p>')
  flush()
  return '\n'.join(out)


if __name__ == '__main__':
  if len(sys.argv) != 2 or not files.isdir(sys.argv[1]):
    sys.exit('usage: python -m recipe_jax.report.html DIR  (a --workdir)')
  print(write(sys.argv[1]))
