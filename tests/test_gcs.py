"""Run directories on gs://, against a GCS API on this machine (tests/helpers/gcs_emulator.py): a run
that survives its VM, a sweep whose trials live in the bucket, a recipe's report read back from
it, and a bucket that cannot be reached, refused in one line."""
import json
import re
import signal
import time
import urllib.parse
import urllib.request

import pytest

from helpers import browser
from helpers import flaky_proxy
from helpers import gcs_emulator
from conftest import cli_flags, run_main, start_main, train_and_evaluate


@pytest.fixture(scope='module')
def bucket():
  with gcs_emulator.running() as host:
    yield host


def fresh_machine(tmp_path, host, name):
  """A process environment as on a new VM that reaches the bucket: a HOME of its own (no data,
  caches or logs of any earlier process), the emulator's endpoint."""
  home = tmp_path / name
  home.mkdir()
  return {'STORAGE_EMULATOR_HOST': host, 'HOME': str(home)}


def objects(host, prefix):
  """Names of the objects under gs://bucket/PREFIX, read through the JSON API."""
  query = urllib.parse.urlencode({'prefix': prefix})
  with urllib.request.urlopen(f'{host}/storage/v1/b/bucket/o?{query}', timeout=10) as reply:
    return [item['name'] for item in json.load(reply).get('items', [])]


def read_object(host, name):
  quoted = urllib.parse.quote(name, safe='')
  with urllib.request.urlopen(f'{host}/storage/v1/b/bucket/o/{quoted}?alt=media',
                              timeout=10) as reply:
    return reply.read()


def test_a_run_on_gs_killed_mid_run_resumes_on_a_new_machine_bit_exactly(bucket, small_config,
                                                                        tmp_path):
  small_config.num_train_steps = 1200
  small_config.checkpoint_every_steps = 100
  straight = train_and_evaluate(small_config, tmp_path / 'local')  # never stopped, local
  small_config.dataset.data_dir = None  # each machine prepares MNIST-1D in its own HOME
  flags = cli_flags(small_config)
  proc = start_main('gs://bucket/killed', *flags, env=fresh_machine(tmp_path, bucket, 'vm1'))
  deadline = time.time() + 240
  while not any(re.fullmatch(r'killed/checkpoints/\d+/commit_success\.txt', n)
                for n in objects(bucket, 'killed/checkpoints/')):
    assert time.time() < deadline and proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert 'killed/summary.json' not in objects(bucket, 'killed/'), 'it finished before the kill'
  resumed = run_main('gs://bucket/killed', *flags, env=fresh_machine(tmp_path, bucket, 'vm2'))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  summary = json.loads(read_object(bucket, 'killed/summary.json'))
  assert summary['resumed_from_step'], read_object(bucket, 'killed/log.txt').decode()[-5000:]
  assert 0 < summary['resumed_from_step'] < 1200
  assert summary['params_sha256'] == straight['params_sha256']
  log = read_object(bucket, 'killed/log.txt').decode()
  assert log.count('mlp on mnist1d') == 2  # both machines' lines, in the bucket's one log
  names = objects(bucket, 'killed/')
  assert any(n.startswith('killed/events.out.tfevents') for n in names)
  assert 'killed/report.html' in names and 'killed/analysis/confusion_matrix.png' in names


def test_a_changed_config_on_a_gs_run_is_refused_and_leaves_it_as_it_was(bucket, small_config,
                                                                         tmp_path):
  small_config.num_train_steps = 60
  env = fresh_machine(tmp_path, bucket, 'vm')
  assert run_main('gs://bucket/done', *cli_flags(small_config), env=env).returncode == 0
  before = {n: read_object(bucket, n) for n in objects(bucket, 'done/')}
  again = run_main('gs://bucket/done', *cli_flags(small_config), '--config.model.width=7',
                   env=env)
  assert again.returncode == 2
  assert 'model.width: 100 -> 7' in again.stderr.strip().splitlines()[-1]
  after = {n: read_object(bucket, n) for n in objects(bucket, 'done/')}
  refusals = json.loads(after.pop('done/refused.json'))  # noted beside it, for the worklog
  assert after == before
  assert [r['reason'] for r in refusals] == [again.stderr.strip().splitlines()[-1][
      len('recipe_jax: error: '):]] and '--config.model.width=7' in refusals[0]['command']
  # What names another run directory reads it from the bucket too.
  tuned = run_main(tmp_path / 'finetune', *cli_flags(small_config),
                   '--config.init_from=gs://bucket/done', env=env)
  assert tuned.returncode == 0, tuned.stderr[-3000:]
  assert json.load(open(tmp_path / 'finetune' / 'summary.json'))['init_from']['source'] == (
      'gs://bucket/done/checkpoints/60')
  evaluated = run_main('gs://bucket/evaluated', '--config=configs/mnist1d/mlp.py',
                       '--config.stage=evaluate', '--config.evaluate.run_dir=gs://bucket/done',
                       f'--config.dataset.data_dir={small_config.dataset.data_dir}', env=env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'evaluated/analysis/confusion_matrix.png' in objects(bucket, 'evaluated/')


def test_a_tune_study_keeps_its_trials_on_gs_and_its_study_in_postgresql(bucket, small_config,
                                                                         tmp_path):
  import optuna
  from helpers import postgres_server
  assert postgres_server.binary('initdb'), 'PostgreSQL is missing: apt-get install postgresql'
  small_config.stage = 'tune'
  small_config.num_train_steps, small_config.eval_every_steps = 40, 20
  small_config.checkpoint_every_steps = 20
  small_config.tune.trials = 2
  small_config.tune.space = json.dumps({'optimizer.learning_rate': {
      'type': 'float', 'low': 1e-3, 'high': 3e-2, 'log': True}})
  env = fresh_machine(tmp_path, bucket, 'vm')
  without = run_main('gs://bucket/sweep', *cli_flags(small_config), env=env)
  assert without.returncode == 2 and 'tune.storage=postgresql' in without.stderr, without.stderr
  with postgres_server.running_server() as url:
    result = run_main('gs://bucket/sweep', *cli_flags(small_config),
                      f'--config.tune.storage={url}', '--config.tune.study_name=gcs', env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name='gcs', storage=url).get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE', 'COMPLETE']
  names = objects(bucket, 'sweep/')
  for t in trials:
    assert t.user_attrs['run_dir'] == f'gs://bucket/sweep/tune/trial_{t.number}'
    assert f'sweep/tune/trial_{t.number}/summary.json' in names
  assert 'sweep/tune/results.md' in names and 'sweep/tune/best_config.py' in names


def test_a_digits_recipe_on_gs_writes_a_report_that_opens_in_chromium(bucket, data_dir, tmp_path):
  from test_recipe import short_digits_recipe
  c = short_digits_recipe(data_dir)
  c.recipe.stages = 'inspect,lr_find,overfit'
  result = run_main('gs://bucket/recipe', *cli_flags(c, 'configs/digits/recipe.py'),
                    env=fresh_machine(tmp_path, bucket, 'vm'))
  assert result.returncode == 0, result.stderr[-3000:]
  page = tmp_path / 'report.html'
  page.write_bytes(read_object(bucket, 'recipe/report.html'))
  shown = browser.open_page(
      str(page), str(tmp_path / 'report.png'),
      'JSON.stringify({images: Array.from(document.images).map(i => i.naturalWidth),'
      ' sections: Array.from(document.querySelectorAll("h2")).map(h => h.id)})')
  found = json.loads(shown['value'])
  assert found['sections'] == ['next-steps', 'inspect', 'lr_find', 'overfit']
  assert len(found['images']) >= 5 and min(found['images']) > 0
  assert shown['requests'] == [] and shown['console_errors'] == []


@pytest.mark.parametrize('workdir, message', [
    ('gs://bucket/run', 'cannot reach the storage endpoint'),
    ('gs://no-such-bucket/run', 'the bucket does not exist'),
])
def test_an_unusable_bucket_is_one_line_exit_2_within_seconds(bucket, tmp_path, workdir, message):
  host = bucket if 'no-such' in workdir else f'http://127.0.0.1:{gcs_emulator.free_port()}'
  start = time.time()
  result = run_main(workdir, '--config=configs/mnist1d/mlp.py',
                    env=fresh_machine(tmp_path, host, 'vm'))
  assert time.time() - start < 30
  assert result.returncode == 2, result.stderr
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f'recipe_jax: error: --workdir={workdir}: {message}'), line


def test_a_bucket_that_stops_answering_mid_run_is_one_line_exit_4_and_the_run_resumes(
    small_config, tmp_path):
  """The GCS endpoint goes away while a run trains (its checkpoints, metrics and log go there):
  gcsfs and tensorstore try again for a bounded time, then one line and exit 4, no traceback.
  Once the bucket answers again, the same command resumes from the last checkpoint."""
  small_config.num_train_steps = 10 ** 6  # still training when the bucket goes
  small_config.checkpoint_every_steps = 200
  flags, port, root = cli_flags(small_config), gcs_emulator.free_port(), tmp_path / 'bucket'
  with gcs_emulator.running(root=root, port=port) as host:
    run = start_main('gs://bucket/stops', *flags, env={'STORAGE_EMULATOR_HOST': host})
    deadline = time.time() + 240
    while not any(re.fullmatch(r'stops/checkpoints/\d+/commit_success\.txt', n)
                  for n in objects(host, 'stops/checkpoints/')):
      assert time.time() < deadline and run.poll() is None, run.stdout.read()[-3000:]
      time.sleep(0.2)
  stopped = time.time()
  output = run.communicate(timeout=600)[0]
  assert run.returncode == 4, output[-3000:]
  assert time.time() - stopped < 300 and 'Traceback' not in output, output[-3000:]
  [line] = [line for line in output.splitlines() if line.startswith('recipe_jax: error:')]
  assert re.match(r'recipe_jax: error: --workdir=gs://bucket/stops: the storage stopped answering '
                  r'mid-run \(\w+: .*\); what was saved stays .* the same command resumes once it '
                  r"answers\. This run's log: /.*log\.txt$", line), line
  with gcs_emulator.running(root=root, port=port) as host:
    resumed = start_main('gs://bucket/stops', *flags, env={'STORAGE_EMULATOR_HOST': host})
    seen = ''
    while not (found := re.search(r'resumed from the checkpoint at step (\d+)', seen)):
      seen += resumed.stdout.readline()
      assert resumed.poll() is None, seen[-3000:]
    resumed.kill()
    resumed.communicate(timeout=60)
  assert int(found.group(1)) >= 200


def test_only_the_storage_libraries_errors_read_as_a_store_that_stopped_answering():
  import aiohttp
  from gcsfs.retry import HttpError
  from recipe_jax import files
  down = aiohttp.ServerDisconnectedError()
  try:
    try:
      raise down
    except aiohttp.ServerDisconnectedError as e:
      raise RuntimeError('the writer failed') from e
  except RuntimeError as wrapped:
    assert files.unanswered(wrapped) is down  # through the chain
  assert files.unanswered(HttpError({'code': 503, 'message': 'unavailable'}))
  assert files.unanswered(ValueError('UNAVAILABLE: error writing gs://bucket/run/x'))
  assert files.unanswered(ValueError('All 6 retry attempts failed: CURL error'))
  for other in (ConnectionError('a worker pipe'), TimeoutError('a future'),
                ValueError('DEADLINE_EXCEEDED: Barrier timed out'),  # JAX's coordination
                HttpError({'code': 403, 'message': 'forbidden'}), FileNotFoundError('x')):
    assert files.unanswered(other) is None, other


def test_every_tensorstore_context_orbax_builds_bounds_its_retries():
  """Orbax's array writes and reads go through tensorstore, whose default is 32 retries up to
  32 s apart (a dead endpoint: minutes). Measured against a closed port: 6 tries end in about
  30 s; the default's 32 were still trying after (see BUILD.md)."""
  from orbax.checkpoint._src.serialization import tensorstore_utils
  from recipe_jax.engine import checkpoints
  for ocdbt in (True, False):
    spec = tensorstore_utils.get_ts_context(use_ocdbt=ocdbt).spec.to_json()
    assert spec['gcs_request_retries']['max_retries'] == 6, spec
  assert checkpoints.TENSORSTORE_RETRIES['max_delay'] == '16s'


def write_object(host, name, data: bytes):
  query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
  request = urllib.request.Request(f'{host}/upload/storage/v1/b/bucket/o?{query}', data=data,
                                   method='POST')
  urllib.request.urlopen(request, timeout=10).close()


def test_a_failed_checkpoint_read_is_retried_and_only_what_stays_unreadable_is_quarantined(
    bucket, small_config, tmp_path):
  """Regression: any restore error moved the checkpoint to checkpoints_corrupt/, so a flaky
  network cost the run its progress. Step 60's bytes are damaged: every try fails, and it is
  quarantined. Step 30's first read is refused once (a flaky network): retried, it restores."""
  with flaky_proxy.running(bucket) as (proxy, failures):
    env = {'STORAGE_EMULATOR_HOST': proxy}  # this machine's caches: compiled steps, data
    assert run_main('gs://bucket/flaky', *cli_flags(small_config), env=env).returncode == 0
    for name in objects(bucket, 'flaky/checkpoints/60/state/'):
      if not name.endswith(('_METADATA', '_CHECKPOINT_METADATA', 'commit_success.txt')):
        write_object(bucket, name, b'damaged')
    failures.set('flaky/checkpoints/30/state/', times=1)  # tensorstore's read of the arrays
    small_config.num_train_steps = 90
    resumed = run_main('gs://bucket/flaky', *cli_flags(small_config), env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert failures.refused == 1 and 'Traceback' not in resumed.stderr, resumed.stderr
  assert 'checkpoint at step 60 failed to restore 3 times' in resumed.stderr
  assert re.search(r'checkpoint at step 30: read failed .*attempt 2 of 3', resumed.stderr)
  assert json.loads(read_object(bucket, 'flaky/summary.json'))['resumed_from_step'] == 30
  assert objects(bucket, 'flaky/checkpoints_corrupt/60/')
  assert not objects(bucket, 'flaky/checkpoints_corrupt/30/')
  # regression: orbax listed the quarantined step still, and the save at 60 failed: it exists
