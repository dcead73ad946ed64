"""The package layout holds what BUILD.md says of it: no import cycles (lazy imports included),
one training loop, one batch order, one list of stages."""
import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'recipe_jax')


def modules() -> dict:
  """dotted module name -> source text, for every module of the package."""
  found = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        with open(path) as f:
          found[dotted.removesuffix('.__init__')] = f.read()
  return found


def imports(source: str, known: set) -> set:
  """The package's modules a module imports anywhere in it (top level or inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('recipe_jax'):
      for alias in node.names:
        candidate = f'{node.module}.{alias.name}'
        found.add(candidate if candidate in known else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in known)
  return found & known


def test_no_module_imports_itself_through_others():
  sources = modules()
  graph = {name: imports(text, set(sources)) - {name} for name, text in sources.items()}
  # Packages' __init__ modules hold no code; a module's package is not an import of it.
  graph = {n: {d for d in deps if not n.startswith(d + '.')} for n, deps in graph.items()}
  cycles, state = [], {}

  def visit(node, path):
    state[node] = 'open'
    for dep in sorted(graph[node]):
      if state.get(dep) == 'open':
        cycles.append(path[path.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, path + [dep])
    state[node] = 'done'
  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)


def test_the_cycle_check_finds_a_planted_cycle():
  graph_sources = {'recipe_jax.a': 'from recipe_jax import b', 'recipe_jax.b': 'def f():\n'
                   '  from recipe_jax import a'}
  known = set(graph_sources)
  assert imports(graph_sources['recipe_jax.b'], known) == {'recipe_jax.a'}
  assert imports(graph_sources['recipe_jax.a'], known) == {'recipe_jax.b'}


def where(pattern: str) -> list:
  return sorted(name for name, text in modules().items() if re.search(pattern, text))


def test_one_training_loop_one_batch_order_one_list_of_stages():
  assert where(r'=\s*train_step\(state') == ['recipe_jax.engine.loop']
  assert where(r"stream_key\([^)]*'data_order'") == ['recipe_jax.engine.batches']
  assert where(r'argsort\(np\.asarray\(bits') == ['recipe_jax.engine.batches']
  assert where(r"\('inspect', 'sanity', 'lr_find'") == ['recipe_jax.config.check']


def test_every_module_sits_in_a_layer_package():
  packages = {n for n in modules() if os.path.isdir(os.path.join(REPO, *n.split('.')))}
  top = sorted(n for n in modules() if n.count('.') == 1 and n not in packages)
  assert top == ['recipe_jax.causes', 'recipe_jax.console', 'recipe_jax.errors',
                 'recipe_jax.files', 'recipe_jax.main', 'recipe_jax.multihost', 'recipe_jax.rng',
                 'recipe_jax.trees', 'recipe_jax.verdicts', 'recipe_jax.words',
                 'recipe_jax.worklog'], top
  # the two commands, and the base


# a verdict's sentence read anywhere: v.summary (not wandb's run.summary, nor a call such as
# runs.summary(dir), nor TensorBoard's tf.summary), v['summary'], v.get('summary')
READS_A_SENTENCE = r"(?<!\.run)(?<!tf)(?<!tensorboard)\.summary\b(?!\s*\()|\[['\"]summary['\"]\]|get\(['\"]summary['\"]"


def test_no_module_outside_rendering_reads_a_verdicts_sentence():
  """Decisions read a verdict's status, cause code and evidence; only the rendering modules
  (report/, and words.sentence, the one place a sentence is put together) show it. A
  rewording then cannot change a decision."""
  readers = [n for n in where(READS_A_SENTENCE)
             if not n.startswith('recipe_jax.report.') and n != 'recipe_jax.words']
  assert readers == [], readers


def test_the_sentence_pattern_finds_every_way_of_reading_it():
  found = lambda text: bool(re.search(READS_A_SENTENCE, text))
  assert found("if 'no bias' in init.summary:") and found("v['summary']")
  assert found("verdict.get('summary', '')") and found('gradients.summary)')
  assert not found('runs.summary(workdir)') and not found("self.run.summary['x'] = 1")
  assert not found('tf.summary.scalar')


def test_no_stage_imports_another_stage():
  """What several stages share (training runs, the noise rule, tables) sits below them; the
  recipe finds the stages through the one stage list (importlib), not by importing them."""
  sources = modules()
  stages = {n for n in sources if n.startswith('recipe_jax.stages.')}
  found = {n: sorted(imports(sources[n], set(sources)) & stages - {n}) for n in stages}
  assert {n: d for n, d in found.items() if d} == {}


# The floors, bottom first: a module imports only from its own floor or below.
FLOORS = (('errors', 'causes', 'files', 'words', 'verdicts', 'rng', 'trees', 'multihost'),
          ('console',), ('data',), ('model',), ('engine',), ('config',), ('diagnose',),
          ('runs',), ('report',), ('stages',), ('main', 'worklog'))


def floor(module: str) -> int | None:
  if module == 'recipe_jax':  # the package's face: it holds no code
    return 0
  room = module.split('.')[1]
  return next((i for i, rooms in enumerate(FLOORS) if room in rooms), None)


def upward_imports(sources: dict) -> list:
  return sorted((n, d) for n, text in sources.items() for d in imports(text, set(sources))
                if floor(d) > floor(n))


def test_every_import_goes_down_the_floors_or_stays_on_its_own():
  sources = modules()
  assert [n for n in sources if floor(n) is None] == []  # every room sits on a floor
  assert upward_imports(sources) == []


def test_the_floor_check_finds_a_planted_upward_import():
  planted = {'recipe_jax.model.x': 'from recipe_jax.report import plots',
             'recipe_jax.report.plots': 'from recipe_jax import files', 'recipe_jax.files': ''}
  assert upward_imports(planted) == [('recipe_jax.model.x', 'recipe_jax.report.plots')]
