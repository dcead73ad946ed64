"""optuna-dashboard on the storage URL the tune stage writes: it lists the study's trials, and a
trial the project ended on purpose (here a surplus one, from a worker that came late) is not
shown as a failure."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import browser
from helpers.gcs_emulator import free_port
from recipe_jax.config import check as config_check
from recipe_jax.stages import tune


def get_json(url: str, timeout_s: float = 60.0):
  deadline = time.time() + timeout_s
  while True:
    try:
      with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)
    except OSError:
      if time.time() > deadline:
        raise
      time.sleep(0.3)


@pytest.fixture
def dashboard(tune_config, tmp_path):
  """A finished 2-trial study plus a surplus trial, and optuna-dashboard serving it."""
  tune_config.tune.trials = 2
  tune.run(tune_config, str(tmp_path))
  out = str(tmp_path / 'tune')
  study = tune.open_study(tune_config, out)
  late_worker = tune.make_objective(tune_config, config_check.decoded(tune_config, 'tune.space'),
                                    out, study, [])
  study.optimize(late_worker, n_trials=1)
  port = free_port()
  command = os.path.join(os.path.dirname(sys.executable), 'optuna-dashboard')
  server = subprocess.Popen([command, tune.storage_url(tune_config, out), '--host', '127.0.0.1',
                             '--port', str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    yield f'http://127.0.0.1:{port}', tmp_path
  finally:
    server.kill()
    server.wait()


def test_optuna_dashboard_reads_the_study_and_shows_no_trial_ended_on_purpose_as_failed(
    dashboard):
  url, tmp_path = dashboard
  [study] = get_json(f'{url}/api/studies')['study_summaries']
  trials = get_json(f"{url}/api/studies/{study['study_id']}")['trials']
  states = [t['state'] for t in trials]
  assert states == ['Complete', 'Complete', 'Pruned'], states
  ended = {a['key']: a['value'] for a in trials[2]['user_attrs']}
  assert ended['ended'] == 'surplus'
  assert all('run_dir' in {a['key'] for a in t['user_attrs']} for t in trials[:2])
  if not browser.chromium():
    pytest.fail('Chromium is missing: apt-get install chromium')
  shot = str(tmp_path / 'dashboard.png')
  page = browser.open_page(f"{url}/dashboard/studies/{study['study_id']}/trials", shot,
                           'document.body.innerText', width=1400,
                           ready="document.body.innerText.includes('Pruned')")
  assert 'Pruned' in page['value'] and 'Complete' in page['value'], page['value'][:2000]
  assert 'Fail' not in page['value'], page['value'][:2000]
  assert os.path.getsize(shot) > 10_000
