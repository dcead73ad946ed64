"""The one registry of checks: every family of checks (a module with a CHECKS tuple of
`check_unit.Check`) listed once here. The stages take their checks and order from it, advice
its rules, and the docs their tables of checks (`python -m recipe_jax.diagnose.registry`
rewrites them; a test fails when they disagree). A new check is an entry in its family's module;
a new family, one more line in FAMILIES."""
import importlib
import os
import sys

# family module -> the docs page whose table lists its checks
FAMILIES = {'recipe_jax.diagnose.sanity_checks': 'docs/step2_sanity.md',
            'recipe_jax.diagnose.analysis_checks': 'docs/step6_squeeze.md'}


def family(module: str) -> tuple:
  return importlib.import_module(module).CHECKS


def every() -> tuple:
  return tuple(c for module in FAMILIES for c in family(module))


def names(stage: str) -> tuple:
  """The checks a stage gives, in the order it runs them."""
  return tuple(c.name for c in every() if stage in c.stages)


def find(stage: str, check: str):
  """The registered check a verdict of `stage` named `check` comes from, or None."""
  return next((c for c in every() if stage in c.stages and c.matches(check)), None)


def docs_table(module: str) -> str:
  rows = [f'| {c.name} | {c.measures} | {c.decides} |' for c in family(module)]
  return '\n'.join(['| check | what it does | FAIL or WARN when |', '|---|---|---|', *rows])


def marker(module: str) -> tuple:
  short = module.rsplit('.', 1)[-1]
  return (f'<!-- checks of {short}: made from recipe_jax/diagnose/registry.py -->',
          '<!-- /checks -->')


def documented(text: str, module: str) -> str:
  """The table between the family's markers in `text`."""
  start, end = marker(module)
  return text[text.index(start) + len(start):text.index(end, text.index(start))].strip()


def write_docs(repo: str) -> None:
  for module, page in FAMILIES.items():
    path = os.path.join(repo, page)
    with open(path) as f:
      text = f.read()
    start, _ = marker(module)
    at = text.index(start) + len(start)
    text = text[:at] + text[at:].replace(documented(text, module), docs_table(module), 1)
    with open(path, 'w') as f:
      f.write(text)


if __name__ == '__main__':  # python -m recipe_jax.diagnose.registry [REPO]
  write_docs(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
