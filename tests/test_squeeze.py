"""stage='squeeze': ensembles, weight averaging with BatchNorm statistics, TTA, distillation."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe_jax.config import check as config_check, defaults
from recipe_jax.diagnose import ensembles, weight_averaging
from recipe_jax.engine import experiment
from recipe_jax.runs import finished as runs
from recipe_jax.errors import UserError
from recipe_jax.stages import squeeze


@pytest.fixture(scope='module')
def separable_npz(tmp_path_factory):
  """Two-class toy data separable by a hyperplane, with a margin."""
  rng = np.random.default_rng(0)
  direction = rng.normal(size=16)

  def draw(n):
    x = rng.normal(size=(n, 16)).astype(np.float32)
    score = x @ direction
    keep = np.abs(score) > 0.5
    return x[keep], (score[keep] > 0).astype(np.int32)

  x_train, y_train = draw(1200)
  x_test, y_test = draw(400)
  path = tmp_path_factory.mktemp('toy') / 'separable.npz'
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return str(path)


def toy_config(npz: str):
  c = defaults.get_config()
  c.stage = 'squeeze'
  c.dataset.name = f'npz:{npz}'
  c.model.name = 'mlp'
  c.model.width = 16
  c.optimizer.learning_rate = 3e-3
  c.num_train_steps = 60
  c.eval_every_steps = 30
  c.checkpoint_every_steps = 60
  c.augment.noise = 0.3
  c.squeeze.members = 'seeds:3'
  c.squeeze.swa_steps = 20
  c.squeeze.swa_every = 5
  c.squeeze.tta_copies = 2
  c.squeeze.student = '{"model.width": 4}'
  return c


@pytest.fixture(scope='module')
def squeezed(separable_npz, tmp_path_factory):
  c = toy_config(separable_npz)
  workdir = str(tmp_path_factory.mktemp('squeezed'))
  return c, workdir, squeeze.run(c, workdir)


def test_ctrl_c_in_squeeze_keeps_the_rows_and_verdicts_done(squeezed, tmp_path, monkeypatch):
  import shutil
  from recipe_jax.engine import loop
  c, workdir, _ = squeezed
  shutil.copytree(workdir, tmp_path / 'copy')
  real = ensembles.tta_probs

  def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt  # arrives during TTA, after SWA
  monkeypatch.setattr(ensembles, 'tta_probs', ctrl_c)
  try:
    result = squeeze.run(c, str(tmp_path / 'copy'))
    assert not result.finished and loop.stopped_by() == 'SIGINT'
  finally:
    loop._stopped_by['signal'] = None
  assert [v.check for v in result.verdicts][-1] == 'weight_averaging'
  table = open(tmp_path / 'copy' / 'squeeze' / 'results.md').read()
  assert 'SWA' in table and 'TTA' not in table
  assert real is not ensembles.tta_probs


def test_squeeze_writes_every_row_and_verdict(squeezed):
  _, workdir, result = squeezed
  assert [v.check for v in result.verdicts] == ['ensemble', 'test_saturation', 'class_recall',
                                                'calibration', 'confusions', 'weight_averaging',
                                                'tta', 'distillation']
  saturated = result.verdicts[1].evidence  # the ensemble against the best member, paired
  assert saturated['models'] == ['ensemble of 3', saturated['runner_up']]
  assert saturated['runner_up'].startswith('best member (seed_')
  assert saturated['a_only'] + saturated['b_only'] > 0 and 0 < saturated['p_value'] <= 1
  table = open(os.path.join(workdir, 'squeeze', 'results.md')).read()
  for name in ('seed_0', 'seed_2', 'mean member', 'best member', 'ensemble of 3', 'SWA', 'EMA',
               'TTA x2', 'student on labels', 'student distilled (T=4)'):
    assert name in table
  for f in result.files:
    assert os.path.getsize(os.path.join(workdir, f)) > 0
  distilled = result.verdicts[-1].evidence['distilled']
  assert distilled['params'] < result.verdicts[0].evidence['ensemble']['params']


def test_an_ensemble_of_different_members_is_at_least_as_accurate_as_the_mean_member(squeezed):
  _, _, result = squeezed
  evidence = result.verdicts[0].evidence
  assert evidence['ensemble']['val_accuracy'] >= evidence['mean_member']['val_accuracy']
  assert evidence['ensemble']['test_accuracy'] >= evidence['mean_member']['test_accuracy']


def test_an_ensemble_of_identical_members_equals_the_member(squeezed, tmp_path):
  c, workdir, _ = squeezed
  member = os.path.join(workdir, 'squeeze', 'members', 'seed_0')
  c = c.copy_and_resolve_references()
  c.squeeze.members = f'{member},{member}'
  c.squeeze.swa_steps, c.squeeze.tta_copies, c.squeeze.student = 0, 0, ''
  evidence = squeeze.run(c, str(tmp_path)).verdicts[0].evidence
  for key in ('val_accuracy', 'val_loss', 'test_accuracy', 'test_ece'):
    assert evidence['ensemble'][key] == pytest.approx(evidence['best_member'][key], abs=1e-9)


def test_a_restarted_squeeze_reuses_finished_members(squeezed, caplog):
  c, workdir, _ = squeezed
  members = os.path.join(workdir, 'squeeze', 'members')

  def seed_0_files():
    return {os.path.relpath(os.path.join(d, n), members): open(os.path.join(d, n), 'rb').read()
            for d, _, names in os.walk(os.path.join(members, 'seed_0')) for n in names}
  before = seed_0_files()
  import shutil
  shutil.rmtree(os.path.join(members, 'seed_1'))  # as if killed before this member finished
  with caplog.at_level('INFO'):
    squeeze.run(c, workdir)
  assert seed_0_files() == before  # reused: not retrained, not rewritten
  assert runs.summary(os.path.join(members, 'seed_1'))['finished']
  assert 'member seed_0 already finished, reused' in caplog.text
  assert 'training member seed_1' in caplog.text and 'training member seed_0' not in caplog.text


def test_members_from_a_tune_study_are_its_best_finished_trials(tmp_path):
  for number, accuracy in ((0, 0.5), (1, 0.9), (2, 0.7), (3, 0.95)):
    trial = tmp_path / 'tune' / f'trial_{number}'
    trial.mkdir(parents=True)
    finished = number != 3  # trial 3 is still running: never a member
    (trial / 'summary.json').write_text(
        f'{{"finished": {str(finished).lower()}, "eval_accuracy": {accuracy}, '
        f'"eval_loss": {1 - accuracy}, "test_accuracy": {1 - accuracy}}}')
  c = defaults.get_config()
  c.squeeze.members, c.squeeze.top_k = f'tune:{tmp_path}', 2
  assert [name for name, _, _ in squeeze.member_runs(c, 'out')] == ['trial_1', 'trial_2']
  c.tune.metric = 'eval_loss'  # lower is better: the same two, not the two worst
  assert [name for name, _, _ in squeeze.member_runs(c, 'out')] == ['trial_1', 'trial_2']
  c.squeeze.members = 'seeds:0'
  with pytest.raises(UserError, match=r"squeeze.members='seeds:0': use 'seeds:N' \(N >= 1\)"):
    config_check.check_values(c)


def test_weight_average_of_one_snapshot_is_that_snapshot():
  params = {'dense': {'kernel': np.arange(6.0).reshape(2, 3), 'bias': np.ones(3)}}
  averaged = weight_averaging.average_params([params])
  jax.tree.map(np.testing.assert_array_equal, averaged, params)
  doubled = jax.tree.map(lambda p: p + 2, params)
  jax.tree.map(lambda a, p: np.testing.assert_allclose(a, p + 1),
               weight_averaging.average_params([params, doubled]), params)


class DenseBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(3, kernel_init=nn.initializers.ones)(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)


def test_batchnorm_statistics_are_recomputed_for_the_averaged_weights():
  model = DenseBatchNorm()
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(256, 4)).astype(np.float32)
  variables = model.init(jax.random.key(0), x[:2])
  stale = {'BatchNorm_0': {'mean': jnp.full(3, -7.0), 'var': jnp.full(3, 0.01)}}
  stats = weight_averaging.recompute_batch_stats(model, variables['params'], stale, x, 64)
  hidden = x @ np.ones((4, 3)) + np.asarray(variables['params']['Dense_0']['bias'])
  batch_vars = [hidden[i:i + 64].var(0) for i in range(0, 256, 64)]
  np.testing.assert_allclose(stats['BatchNorm_0']['mean'], hidden.mean(0), rtol=1e-4)
  np.testing.assert_allclose(stats['BatchNorm_0']['var'], np.mean(batch_vars, 0), rtol=1e-4)


def test_distillation_at_temperature_one_with_a_one_hot_teacher_equals_training_on_labels(
    small_config):
  exp = experiment.build(small_config)
  one_hot = np.eye(exp.dataset.num_classes)[exp.dataset.y_train]
  student = ensembles.student_experiment(exp, one_hot, temperature=1.0)
  x = exp.dataset.x_train
  on_labels, _ = exp.run_steps(x, exp.dataset.y_train, 40)
  distilled, _ = student.run_steps(x, student.dataset.y_train, 40)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               distilled.params, on_labels.params)
  hotter = ensembles.student_experiment(exp, one_hot, temperature=4.0)
  moved, _ = hotter.run_steps(x, hotter.dataset.y_train, 40)
  assert not np.allclose(moved.params['Dense_0']['kernel'], on_labels.params['Dense_0']['kernel'])
