"""stage='recipe': every stage in order, findings handed on, gates, resume; report.html in a
real browser."""
import json
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

from helpers import browser
from conftest import REPO, cli_flags, load_config, read_summary, run_main, start_main
from recipe_jax.errors import ChecksFailed, UserError
from recipe_jax.stages import recipe
from recipe_jax.verdicts import read_result


def short_digits_recipe(data_dir):
  """configs/digits/recipe.py cut to seconds per stage: every stage still runs."""
  c = load_config('configs/digits/recipe.py')
  c.dataset.data_dir = data_dir
  c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 50, 50
  c.inspect.cv_steps, c.inspect.cv_folds = 40, 2
  c.sanity.steps, c.sanity.overfit_steps, c.sanity.seed_steps = 60, 200, 5
  c.sanity.dynamics_every = 20
  c.lr_find.seeds, c.lr_find.steps = 1, 60
  c.compare.seeds = 1
  c.data_scaling.fractions = (0.25, 0.5, 1.0)
  c.tune.trials = 2
  c.squeeze.members, c.squeeze.swa_steps, c.squeeze.swa_every = 'seeds:2', 20, 5
  c.squeeze.student = ''
  c.overfit.target_accuracy = 0.5
  return c


@pytest.fixture(scope='module')
def finished_recipe(tmp_path_factory, data_dir):
  c = short_digits_recipe(data_dir)
  workdir = str(tmp_path_factory.mktemp('recipe'))
  return c, workdir, recipe.run(c, workdir)


def test_a_short_digits_recipe_runs_every_stage_and_hands_its_findings_on(finished_recipe):
  c, workdir, result = finished_recipe
  assert [v.check for v in result.verdicts] == [f'stage_{s}' for s in recipe.STAGES]
  for stage in recipe.STAGES:
    assert read_result(os.path.join(workdir, stage, 'result.json')).finished
  suggestion = read_result(os.path.join(workdir, 'lr_find', 'result.json')
                                  ).metrics['suggestion']
  overfit_config = json.load(open(os.path.join(workdir, 'overfit', 'config.json')))
  assert overfit_config['optimizer']['learning_rate'] == pytest.approx(suggestion)
  tuned = read_result(os.path.join(workdir, 'tune', 'result.json'))
  member = json.load(open(os.path.join(workdir, 'squeeze', 'members', 'seed_0', 'config.json')))
  for key, value in tuned.metrics['best_params'].items():
    section, name = key.split('.')
    assert member[section][name] == pytest.approx(value)
  assert 'tune: best trial' in result.verdicts[recipe.STAGES.index('tune')].summary
  assert os.path.getsize(os.path.join(workdir, 'report.html')) > 10000
  umask = os.umask(0o022)
  os.umask(umask)
  for name in ('report.html', 'overfit/config.json', 'squeeze/result.json'):  # a teammate reads
    assert os.stat(os.path.join(workdir, name)).st_mode & 0o777 == 0o666 & ~umask, name


def file_contents(directory) -> dict:
  """{relative path: bytes} of every file under `directory`."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, directory)] = f.read()
  return found


def test_a_restarted_recipe_reruns_no_finished_stage_and_writes_nothing(finished_recipe, caplog):
  c, workdir, _ = finished_recipe
  before = file_contents(workdir)
  with caplog.at_level('INFO'):
    recipe.run(c, workdir)
  assert caplog.text.count('already finished') == len(recipe.STAGES)
  assert ' starts' not in caplog.text and 'continuing with' not in caplog.text
  after = file_contents(workdir)
  changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
  assert changed == [], changed  # regression: overfit/config.json flipped eval_train_split


def test_one_stage_alone_gets_what_the_earlier_stages_found(finished_recipe, tmp_path):
  c, workdir, _ = finished_recipe
  shutil.copytree(workdir, tmp_path / 'copy', ignore=lambda d, names: (
      ['squeeze'] if os.path.samefile(d, workdir) else []))
  c = c.copy_and_resolve_references()
  c.recipe.stages = 'squeeze'
  recipe.run(c, str(tmp_path / 'copy'))
  tuned = read_result(os.path.join(workdir, 'tune', 'result.json'))
  member = json.load(open(tmp_path / 'copy' / 'squeeze' / 'members' / 'seed_0' / 'config.json'))
  for key, value in tuned.metrics['best_params'].items():
    section, name = key.split('.')
    assert member[section][name] == pytest.approx(value)


def test_the_report_opens_offline_in_chromium_with_every_image_and_stage(finished_recipe,
                                                                         tmp_path):
  if not browser.chromium():
    pytest.fail('chromium is not installed: apt-get install chromium (.ci/run does)')
  _, workdir, _ = finished_recipe
  page = browser.open_page(
      os.path.join(workdir, 'report.html'), str(tmp_path / 'report.png'),
      'JSON.stringify({images: Array.from(document.images).map(i => i.naturalWidth),'
      ' sections: Array.from(document.querySelectorAll("h2")).map(h => h.id)})')
  found = json.loads(page['value'])
  assert len(found['images']) >= 10 and min(found['images']) > 0
  assert found['sections'] == ['next-steps', *recipe.STAGES]
  assert page['requests'] == [] and page['console_errors'] == []
  assert os.path.getsize(tmp_path / 'report.png') > 50000


def test_the_browser_check_catches_a_broken_page(tmp_path):
  """The harness itself: a missing image, a network fetch and a console error are all seen."""
  if not browser.chromium():
    pytest.fail('chromium is not installed: apt-get install chromium (.ci/run does)')
  page_path = tmp_path / 'broken.html'
  page_path.write_text('<html><body><img src="missing.png"><img src="http://example.com/a.png">'
                       '<script>console.error("boom")</script></body></html>')
  page = browser.open_page(str(page_path), str(tmp_path / 'shot.png'),
                           'Array.from(document.images).map(i => i.naturalWidth)')
  assert page['value'] == [0, 0]
  assert page['requests'] == ['http://example.com/a.png']
  assert len(page['console_errors']) >= 2


def planted_leak_npz(path):
  rng = np.random.default_rng(0)
  x_train = rng.normal(size=(200, 8, 8, 1)).astype(np.float32)
  x_test = rng.normal(size=(40, 8, 8, 1)).astype(np.float32)
  x_test[:5] = x_train[100:105]
  np.savez(path, x_train=x_train, y_train=np.repeat(np.arange(4), 50), x_test=x_test,
           y_test=np.repeat(np.arange(4), 10))


def test_the_recipe_stops_at_a_planted_data_leak_with_the_report_written(data_dir, tmp_path):
  c = short_digits_recipe(data_dir)
  planted_leak_npz(tmp_path / 'leak.npz')
  c.dataset.name = f'npz:{tmp_path / "leak.npz"}'
  with pytest.raises(ChecksFailed, match='recipe stopped after inspect: .*near_duplicates'):
    recipe.run(c, str(tmp_path / 'run'))
  assert os.path.exists(tmp_path / 'run' / 'report.html')
  assert not os.path.exists(tmp_path / 'run' / 'sanity')


def test_the_recipe_stops_at_a_batch_mixing_model(data_dir, tmp_path):
  c = short_digits_recipe(data_dir)
  c.model.name = 'helpers.planted_bugs:MixesBatch'
  c.recipe.stages = 'sanity,lr_find'
  result = run_main(tmp_path / 'run', *cli_flags(c, 'configs/digits/recipe.py'),
                    env={'PYTHONPATH': os.path.join(REPO, 'tests')})
  assert result.returncode == 1, result.stderr[-2000:]
  last_line = result.stderr.splitlines()[-1]
  assert 'recipe stopped after sanity: ' in last_line and 'batch_dependency' in last_line
  assert os.path.exists(tmp_path / 'run' / 'report.html')
  assert not os.path.exists(tmp_path / 'run' / 'lr_find')


@pytest.fixture(scope='module')
def never_stopped(data_dir, tmp_path_factory):
  """(flags, workdir) of an lr_find + overfit recipe that ran without a stop."""
  c = short_digits_recipe(data_dir)
  c.recipe.stages = 'lr_find,overfit'
  c.num_train_steps, c.checkpoint_every_steps = 2000, 100
  flags = cli_flags(c, 'configs/digits/recipe.py')
  workdir = tmp_path_factory.mktemp('never_stopped')
  straight = run_main(workdir, *flags)
  assert straight.returncode == 0, straight.stderr[-2000:]
  return flags, workdir


@pytest.mark.parametrize('stop', [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=['SIGKILL', 'SIGTERM', 'Ctrl-C'])
def test_a_recipe_stopped_mid_stage_finishes_like_one_that_never_stopped(never_stopped, tmp_path,
                                                                         stop):
  flags, straight_dir = never_stopped
  proc = start_main(tmp_path / 'killed', *flags)
  checkpoints = tmp_path / 'killed' / 'overfit' / 'checkpoints'
  deadline = time.time() + 240
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert time.time() < deadline and proc.poll() is None, 'no overfit checkpoint appeared'
    time.sleep(0.2)
  proc.send_signal(stop)
  proc.wait()
  if stop != signal.SIGKILL:  # checkpointed; exit 0 (preemption) or 130 (Ctrl-C); the report
    assert proc.returncode == (0 if stop == signal.SIGTERM else 130)  # says where it stopped
    assert 'stopped, resumable' in (tmp_path / 'killed' / 'report.html').read_text()
  before = file_contents(tmp_path / 'killed' / 'lr_find')
  resumed = run_main(tmp_path / 'killed', *flags)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'recipe: lr_find already finished' in resumed.stderr  # not rerun, and not rewritten:
  assert file_contents(tmp_path / 'killed' / 'lr_find') == before
  summary = read_summary(tmp_path / 'killed' / 'overfit')
  assert summary['resumed_from_step'] and summary['resumed_from_step'] > 0
  assert summary['params_sha256'] == read_summary(straight_dir / 'overfit')['params_sha256']


def test_compares_winner_goes_on_only_beyond_seed_noise():
  from recipe_jax.config import defaults
  from recipe_jax.verdicts import StageResult, Verdict
  c = defaults.get_config()
  c.compare.variants = json.dumps({'shift': {'augment.shift': 5}, 'dropout': {'model.dropout': 0.1}})
  beyond = StageResult('compare', [Verdict('variant_shift', 'PASS', ''),
                                   Verdict('variant_dropout', 'WARN', '')],
                       {'best_variant': 'shift'}, [])
  handed, note = recipe.hand_on('compare', beyond, c)
  assert handed == {'augment.shift': 5} and 'beats the baseline' in note
  inside = StageResult('compare', [Verdict('variant_shift', 'WARN', '')],
                       {'best_variant': 'shift'}, [])
  assert recipe.hand_on('compare', inside, c)[0] == {}
  c.recipe.pin_learning_rate = True
  lr = StageResult('lr_find', [], {'suggestion': 0.01}, [])
  assert recipe.hand_on('lr_find', lr, c)[0] == {}


def test_a_finished_stage_with_another_config_is_refused_and_rerun_redoes_what_it_changes(
    finished_recipe, tmp_path, caplog):
  c, workdir, _ = finished_recipe
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  c = c.copy_and_resolve_references()
  c.recipe.stages = 'lr_find,overfit'
  c.lr_find.max_lr = 1.0  # lr_find would find another rate
  with pytest.raises(UserError, match=r'the lr_find stage in .* holds a run of another config: '
                                      r'lr_find.max_lr: 10.0 -> 1.0.*--config.recipe.rerun=lr_find'):
    recipe.run(c, str(copy))
  c.recipe.rerun = 'lr_find'
  with caplog.at_level('INFO'):
    again = recipe.run(c, str(copy))
  assert 'lr_find is redone (asked to rerun)' in caplog.text
  assert 'overfit is redone (its config changed with what lr_find found anew)' in caplog.text
  kept = sorted(p.name for p in copy.iterdir() if '.before-' in p.name)
  assert [k.split('.before-')[0] for k in kept] == ['lr_find', 'overfit']
  assert [v.check for v in again.verdicts] == [f'stage_{s}' for s in recipe.STAGES]  # all kept
  old = read_result(os.path.join(workdir, 'lr_find', 'result.json'))
  new = read_result(copy / 'lr_find' / 'result.json')
  assert new.metrics['suggestion'] != old.metrics['suggestion']
  overfit_config = json.load(open(copy / 'overfit' / 'config.json'))
  assert overfit_config['optimizer']['learning_rate'] == pytest.approx(new.metrics['suggestion'])


def test_the_reports_reproduce_command_reruns_its_stage_and_keeps_the_recipes_result(
    data_dir, tmp_path):
  import html
  import shlex
  import subprocess
  import sys
  c = short_digits_recipe(data_dir)
  c.recipe.stages = 'inspect,lr_find'
  workdir = tmp_path / 'run'
  assert run_main(workdir, *cli_flags(c, 'configs/digits/recipe.py')).returncode == 0
  page = html.unescape((workdir / 'report.html').read_text())
  [command] = [m for m in re.findall(r'<code>(python -m recipe_jax.main [^<]*)</code>', page)
               if m.endswith('--config.recipe.rerun=lr_find')]
  before = file_contents(workdir / 'lr_find')
  rerun = subprocess.run([sys.executable, *shlex.split(command)[1:]],  # 'python' is this one
                         capture_output=True, text=True, cwd=REPO)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'lr_find is redone' in rerun.stderr and 'recipe: lr_find starts' in rerun.stderr
  [kept] = [p for p in workdir.iterdir() if p.name.startswith('lr_find.before-')]
  assert file_contents(kept) == before  # the earlier results, moved aside whole
  assert read_result(workdir / 'lr_find' / 'result.json').finished  # and made anew
  recipe_result = read_result(workdir / 'recipe' / 'result.json')
  assert [v.check for v in recipe_result.verdicts] == ['stage_inspect', 'stage_lr_find']


def test_a_workdir_of_the_older_nested_layout_is_refused_with_what_to_do(tmp_path, data_dir):
  (tmp_path / 'lr_find' / 'lr_find').mkdir(parents=True)
  (tmp_path / 'lr_find' / 'lr_find' / 'result.json').write_text('{}')
  with pytest.raises(UserError, match='older layout .* run the recipe in a new --workdir'):
    recipe.run(short_digits_recipe(data_dir), str(tmp_path))


def visible_defects(text: str, headers: list) -> list:
  """What a person should not have to read: raw floats of more than 6 significant digits,
  empty table headers (a first column may say what its rows are), literal backticks."""
  found = []
  for number in re.findall(r'(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?', text):
    digits = number.split('e')[0].replace('.', '').lstrip('0')
    if len(digits) > 6:
      found.append(f'long float {number}')
  found += ['empty table header' for h in headers if not h.strip()]
  found += ['literal backtick' for _ in range(text.count('`'))]
  return found


def page_text(path, tmp_path):
  page = browser.open_page(str(path), str(tmp_path / 'shot.png'), 'JSON.stringify({text: '
                           'document.body.innerText, headers: Array.from(document.querySelectorAll'
                           '("th")).map(h => h.innerText)})')
  found = json.loads(page['value'])
  return found['text'], found['headers']


def test_the_reports_visible_text_reads_as_words_and_numbers_of_their_precision(
    finished_recipe, tmp_path):
  _, workdir, _ = finished_recipe
  text, headers = page_text(os.path.join(workdir, 'report.html'), tmp_path)
  assert visible_defects(text, headers) == [], text[:2000]
  assert 'test accuracy of the ensemble (squeeze)' in text
  assert_next_steps_on_top_and_a_line_for_every_warn_and_fail(workdir, text)


def assert_next_steps_on_top_and_a_line_for_every_warn_and_fail(workdir, text):
  assert text.index('Next steps') < 2500, text[:2500]  # after the headline and the stage table
  for stage in recipe.STAGES:  # every WARN and FAIL: one line saying act or ignore, and why
    path = os.path.join(workdir, stage, 'result.json')
    for v in read_result(path).verdicts if os.path.exists(path) else []:
      if v.status != 'PASS':
        assert re.search(rf'{v.status} {stage} {v.check}: (act|ignore) \u2014 \w', text), (
            stage, v.check)


def test_the_mnist1d_recipes_report_starts_with_what_to_do_next(data_dir, tmp_path):
  """README's first command, cut to seconds per stage: the page a newcomer opens first."""
  c = load_config('configs/mnist1d/recipe.py')
  c.dataset.data_dir = data_dir
  c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps = 150, 50, 50
  c.inspect.cv_steps, c.inspect.cv_folds = 40, 2
  c.sanity.steps, c.sanity.overfit_steps, c.sanity.seed_steps = 60, 200, 5
  c.lr_find.seeds, c.lr_find.steps = 1, 60
  c.tune.trials, c.squeeze.swa_steps = 2, 20
  c.recipe.overrides = json.dumps({'overfit': {'num_train_steps': 300}})
  c.recipe.continue_on_fail = True  # a FAIL of the short runs is one more line to find
  workdir = str(tmp_path / 'mnist1d')
  recipe.run(c, workdir)
  text, headers = page_text(os.path.join(workdir, 'report.html'), tmp_path)
  assert visible_defects(text, headers) == [], text[:2000]
  assert_next_steps_on_top_and_a_line_for_every_warn_and_fail(workdir, text)
  steps = text[text.index('Next steps'):text.index('Every WARN and FAIL')]
  assert 'the ensemble is the model to use: test accuracy' in steps


def test_the_text_check_catches_long_floats_empty_headers_and_backticks(tmp_path):
  page = tmp_path / 'bad.html'
  page.write_text('<html><body><p>lr 0.011689251750068384 and `{"a": 1}`</p>'
                  '<table><tr><th></th><th>ok</th></tr></table></body></html>')
  assert sorted(visible_defects(*page_text(page, tmp_path))) == [
      'empty table header', 'literal backtick', 'literal backtick',
      'long float 0.011689251750068384']
