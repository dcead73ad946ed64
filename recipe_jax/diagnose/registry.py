"""The one registry of checks: every family of checks (a module with a CHECKS tuple of
`check_unit.Check`) listed once here. The stages take their order from it, advice its rules,
and the docs their tables of checks (`python -m recipe_jax.diagnose.registry` rewrites them; a
test fails when they disagree). A new check is an entry in its family's module; a new family,
one more line in FAMILIES."""
import importlib
import os
import sys

FAMILIES = ('recipe_jax.diagnose.sanity_checks',)
DOCS = {'sanity': 'docs/step2_sanity.md'}  # the page whose table lists a stage's checks


def every() -> tuple:
  return tuple(c for family in FAMILIES for c in importlib.import_module(family).CHECKS)


def names(stage: str) -> tuple:
  """The checks a stage gives, in the order it runs them."""
  return tuple(c.name for c in every() if c.stage == stage)


def find(stage: str, check: str):
  """The registered check a verdict of `stage` named `check` comes from, or None."""
  return next((c for c in every() if c.stage == stage and c.matches(check)), None)


def docs_table(stage: str) -> str:
  rows = [f'| {c.name} | {c.measures} | {c.decides} |' for c in every() if c.stage == stage]
  return '\n'.join(['| check | what it does | FAIL when |', '|---|---|---|', *rows])


def marker(stage: str) -> tuple:
  return f'<!-- checks of {stage}: made from recipe_jax/diagnose/registry.py -->', '<!-- /checks -->'


def documented(text: str, stage: str) -> str:
  """The table between the stage's markers in `text`."""
  start, end = marker(stage)
  return text[text.index(start) + len(start):text.index(end, text.index(start))].strip()


def write_docs(repo: str) -> None:
  for stage, page in DOCS.items():
    path = os.path.join(repo, page)
    with open(path) as f:
      text = f.read()
    start, end = marker(stage)
    old = documented(text, stage)
    at = text.index(start) + len(start)
    text = text[:at] + text[at:].replace(old, docs_table(stage), 1)
    with open(path, 'w') as f:
      f.write(text)


if __name__ == '__main__':  # python -m recipe_jax.diagnose.registry [REPO]
  write_docs(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
