"""What every stage returns and writes: verdicts (one JSON shape for every stage), a
`StageResult` in `DIR/<stage>/result.json`, the console lines, and a readable report.md.

The recipe runner and the HTML report read `result.json` alone, so a new stage needs no
special case anywhere."""
import dataclasses
import os

from absl import logging

from recipe_jax import files
from recipe_jax import multihost
from recipe_jax.errors import ChecksFailed
from recipe_jax.verdicts import StageResult, count, jsonable
from recipe_jax.words import headline, sentence

def finish(workdir: str, result: StageResult, title: str, images: dict | None = None
           ) -> StageResult:
  """Writes DIR/<stage>/{verdicts.json, report.md, result.json}, the console lines, and
  DIR/report.html (every stage's result in DIR, one self-contained page)."""
  from recipe_jax.report import html as html_report
  directory = os.path.join(workdir, result.stage)
  if result.verdicts:
    write(directory, title, result.verdicts, images)
  result.images = {check: [os.path.relpath(p, workdir) for p in paths]
                   for check, paths in (images or {}).items()}
  if not multihost.is_leader():  # a multi-host job: process 0 writes the files
    return result
  files.write_json(files.join(directory, 'result.json'), result.to_json())
  html_report.write(workdir)
  return result


def write(directory: str, title: str, verdicts: list, images: dict | None = None) -> None:
  """verdicts.json, report.md (images inline, under the check that made them), console lines;
  only process 0 of a multi-host job writes the files."""
  for v in verdicts:
    logging.info('%-4s %-22s %s', v.status, v.check, sentence(v))
  if not multihost.is_leader():
    return
  files.write_json(files.join(directory, 'verdicts.json'),
                   [jsonable(dataclasses.asdict(v)) for v in verdicts])
  lines = [f'# {title}', '', ' · '.join(f'{n} {s}' for s, n in count(verdicts).items()), '']
  for v in verdicts:
    lines += [f'## {v.status} {v.check}', '', sentence(v), '']
    for image in (images or {}).get(v.check, []):
      lines += [f'![{v.check}]({os.path.relpath(image, directory)})', '']
  files.write_text(files.join(directory, 'report.md'), '\n'.join(lines))


def closing_lines(result: StageResult, workdir: str) -> list:
  """What a person reads at the end of a run: the stage, its result in words, the verdict
  counts, the page to open first, the other files to look at, and what to do next."""
  state = 'finished' if result.finished else 'stopped (resume with the same command)'
  counts = result.counts()
  numbers = headline(result.metrics)
  counted = 'stages' if result.stage == 'recipe' else 'checks'  # the recipe's verdicts are stages
  lines = [f'{result.stage} {state}: {sum(counts.values())} {counted}: '
           + ', '.join(f'{n} {s}' for s, n in counts.items()),
           *([numbers] if numbers else []),
           f"open first: {os.path.join(workdir, 'report.html')}"]
  others = [f for f in result.files if f != 'report.html']
  if others:
    lines.append('also: ' + ', '.join(os.path.join(workdir, f) for f in others))
  from recipe_jax.report import advice, html  # here: html reads this module's results
  if not result.finished:  # its verdicts are not all in: resuming is the next step
    return lines
  found = ([r for _, r in html.find_results(workdir)] if result.stage == 'recipe'
           else [result.to_json()])
  return lines + [f'next: {step}' for step in advice.next_steps(found)]


def raise_if_failed(result: StageResult, workdir: str) -> None:
  """ChecksFailed (exit code 1) when any verdict FAILed, pointing at the report."""
  failed = [v.check for v in result.verdicts if v.status == 'FAIL']
  if failed:
    where = os.path.join(workdir, result.stage, 'report.md')
    raise ChecksFailed(f'{len(failed)} check(s) FAILed: {", ".join(failed)}; see {where}')


if __name__ == '__main__':  # python -m recipe_jax.report.results DIR: (re)writes DIR/report.html
  import sys
  from recipe_jax.report import html as html_report
  if len(sys.argv) != 2 or not files.isdir(sys.argv[1]):
    sys.exit('usage: python -m recipe_jax.report.results DIR  (a --workdir)')
  print(html_report.write(sys.argv[1]))
