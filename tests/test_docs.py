"""README's quickstart is what CI runs: exactly two commands, the second the one .ci/run greps."""
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


def test_every_config_named_in_readme_and_reference_script_exists():
  named = set(re.findall(r'configs/[\w/]+\.py', read('README.md') + read('scripts/reference_results.py')))
  assert named and all(os.path.isfile(os.path.join(REPO, path)) for path in named), named


def reference_script():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'reference_results', os.path.join(REPO, 'scripts', 'reference_results.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_readme_reference_table_is_made_from_the_recorded_results():
  script = reference_script()
  with open(script.RESULTS) as f:
    recorded = json.load(f)
  readme = read('README.md')
  shown = readme[readme.index(script.TABLE_START) + len(script.TABLE_START):
                 readme.index(script.TABLE_END)].strip()
  assert shown == script.table(recorded)
  assert set(recorded['configs']) == set(script.REFERENCE)
