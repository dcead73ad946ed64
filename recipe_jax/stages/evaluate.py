"""stage='evaluate': the error analysis of a finished run (or one of its checkpoints), without
retraining: `--config.evaluate.run_dir=RUN`. Every finished train run does the same at its end.

Writes DIR/analysis/ (see `recipe_jax.diagnose.analysis`) on the validation split; the test split only
with `--config.analysis.split=test`, and never to select anything. Only this stage also states
whether the test split still resolves the model (`diagnose.saturation`: errors left, the
accuracy's interval); a train run's own analysis does not.
"""
from recipe_jax.diagnose import saturation
from recipe_jax.engine import experiment
from recipe_jax.report import error_analysis, results as report
from recipe_jax.runs import finished as runs
from recipe_jax.errors import UserError
from recipe_jax.verdicts import StageResult
from recipe_jax.engine import evaluate



def run_config(config):
  """The evaluated run's own config, with this command's analysis settings (and data_dir, when
  given)."""
  if not config.evaluate.run_dir:
    raise UserError('stage=evaluate needs --config.evaluate.run_dir=DIR, the --workdir of a '
                    'train run')
  evaluated = runs.load_config(config.evaluate.run_dir)
  evaluated.analysis = config.analysis
  if config.dataset.data_dir:
    evaluated.dataset.data_dir = config.dataset.data_dir
  return evaluated


def run(config, workdir: str) -> StageResult:
  run_dir = config.evaluate.run_dir
  exp = experiment.build(run_config(config))
  state = runs.restore_final_state(exp, run_dir, config.evaluate.step)
  done = runs.summary(run_dir) or {}
  found, images, metrics = error_analysis.analyse(exp, state, workdir, done.get('history'))
  metrics['step'] = int(state.step)
  test_predictions = evaluate.probabilities(exp, state, exp.dataset.x_test).argmax(-1)
  found.append(saturation.verdict(exp.dataset.y_test,
                                  {f'the model at step {int(state.step)}': test_predictions}))
  result = StageResult('evaluate', found, metrics, error_analysis.written(workdir, images))
  return report.finish(workdir, result, f'Evaluate: {run_dir} at step {int(state.step)}', images)
