"""Error analysis: hand-computed metrics, planted confusions, the train and evaluate stages."""
import csv
import os

import numpy as np
import pytest

from recipe_jax.config import defaults
from recipe_jax.diagnose import analysis, analysis_checks
from recipe_jax.engine import experiment
from recipe_jax.report import error_analysis, plots
from recipe_jax import words
from recipe_jax.runs import finished as runs
from recipe_jax.errors import UserError
from recipe_jax.engine import evaluate
from recipe_jax.stages import evaluate as evaluate_stage, train
from recipe_jax.verdicts import read_result

# Six examples, three classes; predictions 0, 0, 1, 1, 0, 2 (two mistakes).
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                  [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])


def test_confusion_matrix_and_per_class_metrics_match_hand_computed_values():
  counts = analysis.confusion_matrix(LABELS, PROBS.argmax(-1), 3)
  np.testing.assert_array_equal(counts, [[2, 1, 0], [1, 1, 0], [0, 0, 1]])
  stats = analysis.per_class(counts)
  np.testing.assert_allclose(stats['precision'], [2 / 3, 1 / 2, 1])
  np.testing.assert_allclose(stats['recall'], [2 / 3, 1 / 2, 1])
  np.testing.assert_allclose(stats['f1'], [2 / 3, 1 / 2, 1])
  np.testing.assert_array_equal(stats['support'], [3, 2, 1])


def test_expected_calibration_error_with_equal_mass_bins_matches_hand_computed_value():
  # Sorted confidences .5(wrong) .6 .7(wrong) | .8 .8 .9: bins of three.
  ece, bins = analysis.calibration(PROBS, LABELS, num_bins=2)
  assert [b['count'] for b in bins] == [3, 3]
  np.testing.assert_allclose(ece, 0.5 * abs(1 / 3 - 0.6) + 0.5 * abs(1 - 2.5 / 3))
  perfectly_sure_and_right = np.eye(3)[LABELS]
  assert analysis.calibration(perfectly_sure_and_right, LABELS)[0] == 0.0


@pytest.mark.parametrize('ece, status, shown', [
    (0.0495, 'PASS', '0.0495'), (0.04999, 'PASS', '0.04999'), (0.05001, 'WARN', '0.05001'),
    (0.0123, 'PASS', '0.0123')])
def test_an_ece_beside_its_threshold_is_shown_on_its_own_side(ece, status, shown):
  cfg = defaults.get_config().analysis
  counts = np.array([[5, 1], [1, 5]])
  found = {v.check: v
           for v in analysis.verdicts(counts, analysis.per_class(counts), ece, [], cfg)}
  assert found['calibration'].status == status
  assert f'expected calibration error {shown} on val' in found['calibration'].summary


def test_the_reliability_plot_says_which_bins_it_draws_and_which_the_ece_uses(monkeypatch):
  drawn = {}
  monkeypatch.setattr(plots, 'save', lambda fig, path: drawn.update(fig=fig))
  confidence = np.linspace(0.35, 1.0, 200)
  plots.reliability('unused.png', confidence, confidence > 0.5, 0.0174, 15)
  ax = drawn['fig'].axes[0]
  assert ax.get_title() == 'accuracy in 10 equal-width confidence bins'
  assert len(ax.patches) == 7  # the filled ones of the 10 drawn
  assert drawn['fig']._suptitle.get_text().startswith('ECE 0.0174, over 15 equal-mass bins')
  legend = ax.get_legend().get_window_extent()
  tallest = max(t.get_window_extent().y1 for t in ax.texts)  # the counts above the bars
  assert legend.y0 > tallest


def test_beside_reads_on_the_side_of_the_threshold_the_value_is():
  assert words.beside(0.0495, 0.05) == '0.0495' and words.beside(0.049999, 0.05) == '0.049999'
  assert words.beside(0.05, 0.05) == '0.05' and words.beside(1.9996, 2.0) == '1.9996'
  assert words.beside(12.34, 5) == '12.3'
  assert words.beside(0.9 - 0.8, 0.1) == 'just under 0.1'  # 0.09999999999999998: no long float


def test_top_confusions_and_most_confident_wrong_are_sorted_and_really_wrong():
  counts = analysis.confusion_matrix(LABELS, PROBS.argmax(-1), 3)
  assert analysis.top_confusions(counts) == [
      {'true': 0, 'predicted': 1, 'count': 1, 'fraction_of_class': 1 / 3},
      {'true': 1, 'predicted': 0, 'count': 1, 'fraction_of_class': 1 / 2}]
  np.testing.assert_array_equal(analysis.most_confident_wrong(PROBS, LABELS, 5), [2, 4])


def test_still_improving_tells_a_rising_curve_from_a_flat_one():
  rising = [{'eval_accuracy': a} for a in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)]
  flat = [{'eval_accuracy': a} for a in (0.5, 0.9, 0.91, 0.9, 0.91, 0.9, 0.9, 0.905)]
  assert analysis_checks.still_improving(rising)[1]
  assert not analysis_checks.still_improving(flat)[1]


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, data_dir):
  """A finished train-stage run of a short mnist1d CNN (the analysis runs at its end)."""
  c = defaults.get_config()
  c.dataset.name = 'mnist1d'
  c.dataset.data_dir = data_dir
  c.model.name = 'cnn1d'
  c.optimizer.learning_rate = 1e-2
  c.num_train_steps = 600
  c.eval_every_steps = 75
  c.checkpoint_every_steps = 300
  workdir = str(tmp_path_factory.mktemp('analysed'))
  return c, workdir, train.run(c, workdir)


def test_every_finished_train_run_writes_its_error_analysis(trained_run):
  config, workdir, result = trained_run
  checks = [v.check for v in result.verdicts]
  assert {'class_recall', 'calibration', 'confusions', 'still_improving'} <= set(checks)
  for name in ('confusion_matrix.csv', 'confusion_matrix.png', 'per_class.csv',
               'reliability.png', 'most_confident_wrong.png'):
    assert os.path.getsize(os.path.join(workdir, 'analysis', name)) > 0
  with open(os.path.join(workdir, 'analysis', 'confusion_matrix.csv')) as f:
    counts = np.array([row[1:] for row in csv.reader(f)][1:], int)
  exp = experiment.build(config)
  assert counts.sum() == len(exp.dataset.y_val)  # the validation split, not test
  accuracy = next(v for v in result.verdicts if v.check == 'confusions').evidence['accuracy']
  summary = runs.summary(workdir)
  assert accuracy == pytest.approx(summary['eval_accuracy'], abs=1e-6)
  wrong = next(v for v in result.verdicts if v.check == 'class_recall'
               ).evidence['most_confident_wrong']
  assert wrong['labels'] != wrong['predicted'] or not wrong['labels']
  assert all(a != b for a, b in zip(wrong['labels'], wrong['predicted']))
  assert wrong['probability'] == sorted(wrong['probability'], reverse=True)
  assert wrong['source_split'] == 'train'  # validation is carved from the source train split
  np.testing.assert_array_equal(wrong['source_rows'],
                                exp.dataset.val_rows[wrong['indices']])
  assert '../analysis/confusion_matrix.png' in open(os.path.join(workdir, 'train',
                                                                 'report.md')).read()


def test_a_planted_systematic_confusion_is_the_top_confusion_and_warns(trained_run, tmp_path):
  config, workdir, _ = trained_run
  exp = experiment.build(config)
  probs = evaluate.probabilities(exp, runs.restore_final_state(exp, workdir), exp.dataset.x_val)
  labels = exp.dataset.y_val.copy()
  threes = np.flatnonzero(labels == 3)
  labels[threes[::2]] = 5  # half of class 3 labelled 5: the model (rightly) says 3
  found, _ = error_analysis.write(str(tmp_path), probs, labels, exp.dataset.x_val, config.analysis)
  top = next(v for v in found if v.check == 'confusions').evidence['top_confusions'][0]
  assert (top['true'], top['predicted']) == (5, 3)
  assert top['count'] >= 0.8 * len(threes[::2])
  recall = next(v for v in found if v.check == 'class_recall')
  assert recall.status == 'WARN' and 5 in recall.evidence['neglected_classes']


def test_evaluate_stage_analyses_a_run_without_retraining(trained_run, tmp_path):
  config, workdir, _ = trained_run
  c = defaults.get_config()
  c.stage = 'evaluate'
  c.evaluate.run_dir = workdir
  c.analysis.split = 'test'
  result = evaluate_stage.run(c, str(tmp_path))
  summary = runs.summary(workdir)
  assert result.metrics['test_accuracy'] == pytest.approx(summary['test_accuracy'], abs=1e-6)
  assert result.metrics['step'] == 600
  [saturated] = [v for v in result.verdicts if v.check == 'test_saturation']
  assert saturated.summary.startswith('the model at step 600: ') and 'test errors left of' in (
      saturated.summary)
  test_accuracy = saturated.evidence['accuracy']
  assert test_accuracy == pytest.approx(summary['test_accuracy'], abs=1e-6)
  assert saturated.evidence['interval_95'][0] < test_accuracy < saturated.evidence['interval_95'][1]
  assert read_result(str(tmp_path / 'evaluate' / 'result.json')).stage == 'evaluate'
  assert os.path.exists(tmp_path / 'analysis' / 'confusion_matrix.png')
  c.evaluate.step = 300  # an earlier checkpoint
  assert evaluate_stage.run(c, str(tmp_path / "at300")).metrics['step'] == 300
  c.evaluate.step = 123
  with pytest.raises(UserError, match='no checkpoint at step 123'):
    evaluate_stage.run(c, str(tmp_path / 'missing'))
  c.evaluate.run_dir = str(tmp_path / 'nothing_here')
  with pytest.raises(UserError, match='not a run directory'):
    evaluate_stage.run(c, str(tmp_path / 'x'))


def test_evaluate_into_the_run_directory_itself_keeps_the_runs_config(trained_run):
  from conftest import run_main
  config, workdir, _ = trained_run
  before = open(os.path.join(workdir, 'config.json')).read()
  result = run_main(workdir, '--config=recipe_jax/config/defaults.py', '--config.stage=evaluate',
                    f'--config.evaluate.run_dir={workdir}',
                    f'--config.dataset.data_dir={config.dataset.data_dir}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert open(os.path.join(workdir, 'config.json')).read() == before
  assert read_result(os.path.join(workdir, 'evaluate', 'result.json')).metrics['step'] == 600


def test_errors_held_by_one_class_warn_and_spread_errors_pass():
  """The check added last (one entry in analysis_checks.py): near its threshold both ways."""
  cfg = defaults.get_config().analysis

  def found(errors_of_class_0, errors_of_class_1):
    counts = np.diag([100, 100, 100]).astype(np.int64)
    counts[0, 1], counts[1, 2] = errors_of_class_0, errors_of_class_1
    verdicts = analysis.verdicts(counts, analysis.per_class(counts), 0.0, [], cfg)
    return {v.check: v for v in verdicts}.get('errors_in_one_class')

  assert found(11, 9).status == 'WARN' and 'class 0 holds 55% of the 20 errors' in found(
      11, 9).summary
  assert found(11, 9).where == [0]
  assert found(10, 10).status == 'PASS'  # 50%: not over
  assert found(10, 9) is None  # 19 errors: too few to say
