"""README's quickstart is what CI runs: exactly two commands, the second the one .ci/run greps.
README stays a five-minute read; the rest is in docs/, whose links, commands, configs and
scripts must all exist."""
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
  with open(os.path.join(REPO, name)) as f:
    return f.read()


def quickstart_commands():
  section = read('README.md').split('## Quickstart', 1)[1]
  block = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
  return [line for line in block.splitlines() if line.strip()]


def test_quickstart_is_exactly_two_commands_install_and_run_then_install_and_test():
  train_cmd, test_cmd = quickstart_commands()
  assert train_cmd.startswith('pip install -e . && python -m recipe_jax.main --config=configs/')
  assert test_cmd == 'pip install -e ".[test]" && python -m pytest -q'


def test_ci_runs_readmes_install_then_its_test_command():
  """.ci/run greps README for the quickstart's install (first command, without TensorFlow)
  and then for its test command: both patterns find exactly those lines."""
  install, tests = re.findall(r"grep -m1 '(.*?)' README.md", read('.ci/run'))
  first = lambda pattern: [l for l in read('README.md').splitlines() if re.match(pattern, l)][0]
  assert first(install) == quickstart_commands()[0]
  assert first(tests) == quickstart_commands()[1]


def pages():
  """README.md and every page under docs/, as repository paths."""
  docs = sorted(f'docs/{n}' for n in os.listdir(os.path.join(REPO, 'docs')) if n.endswith('.md'))
  return ['README.md'] + docs


def test_readme_is_a_five_minute_read():
  assert len(read('README.md').splitlines()) <= 160


def test_every_config_named_in_the_docs_and_reference_script_exists():
  text = ''.join(read(page) for page in pages()) + read('scripts/reference_results.py')
  named = set(re.findall(r'configs/[\w/]+\.py', text))
  assert named and all(os.path.isfile(os.path.join(REPO, path)) for path in named), named


def test_every_command_in_the_docs_names_a_config_file_that_exists():
  """Each `python -m recipe_jax.main ...` (a code block's line with its continuations, or an
  inline command across a line break) names `--config=` a file there, from the folder that a
  `cd DIR &&` before it moves to; only `--help` names none."""
  missing, seen = [], 0
  for page in pages():
    commands = r'(?:cd (\S+) && )?python -m recipe_jax\.main\b((?:[ \t]|\\?\n)+\S+)'
    for cd, rest in re.findall(commands, read(page)):
      option = rest.split()[-1].strip('`')
      if option == '--help':
        continue
      seen += 1
      config = re.fullmatch(r'--config=(\S+\.py)', option)
      if not config or not os.path.isfile(os.path.join(REPO, cd or '', config.group(1))):
        missing.append((page, cd, option))
  assert seen and not missing, missing


def test_every_script_named_in_the_docs_exists():
  named = {(page, path) for page in pages()
           for path in re.findall(r'python\s+(scripts/[\w/]+\.py)', read(page))}
  missing = sorted(n for n in named if not os.path.isfile(os.path.join(REPO, n[1])))
  assert named and not missing, missing


def anchors(page):
  """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
  headings = re.findall(r'^#+ (.*)$', re.sub(r'```.*?```', '', read(page), flags=re.S), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_every_relative_link_in_the_docs_resolves():
  """Every `](path)` and `](path#heading)` in README and docs/ that is not a URL names a file
  that exists from the page's own folder (images included), and a heading of that page."""
  broken = []
  for page in pages():
    for target in re.findall(r'\]\(([^)\s]+)\)', read(page)):
      if re.match(r'[a-z]+:', target):
        continue
      path, _, anchor = target.partition('#')
      path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
      if not os.path.isfile(os.path.join(REPO, path)):
        broken.append((page, target))
      elif anchor and (not path.endswith('.md') or anchor not in anchors(path)):
        broken.append((page, target))
  assert not broken, broken


def reference_script():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'reference_results', os.path.join(REPO, 'scripts', 'reference_results.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_docs_reference_table_is_made_from_the_recorded_results():
  script = reference_script()
  assert os.path.relpath(script.TABLE_PAGE, REPO) == os.path.join('docs', 'reference_results.md')
  with open(script.RESULTS) as f:
    recorded = json.load(f)
  page = read(os.path.relpath(script.TABLE_PAGE, REPO))
  shown = page[page.index(script.TABLE_START) + len(script.TABLE_START):
               page.index(script.TABLE_END)].strip()
  assert shown == script.table(recorded)
  assert set(recorded['configs']) == set(script.REFERENCE)
