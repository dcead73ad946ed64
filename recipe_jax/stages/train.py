"""stage='train': train the configured model, keep checkpoints, write config.json and summary.json.

Verdicts: `finished` (PASS; WARN when preempted, to be resumed; FAIL when it diverged),
`train_val_gap` (WARN when the training accuracy exceeds validation by more than
`max_train_val_gap`: the model overfits, regularise), `extended` when a finished run is
restarted with a larger `num_train_steps` ("leave it training": it continues from its last
checkpoint; bit-identical to a run that long from the start with a constant learning rate, a
WARN for other schedules, whose shape changes), and the error analysis of the final state
(`recipe_jax.diagnose.analysis`, files in DIR/analysis/).
"""
import os

from recipe_jax.diagnose import data_checks, noise
from recipe_jax.engine import experiment
from recipe_jax.errors import DivergenceError
from recipe_jax.model import optim
from recipe_jax.report import error_analysis, plots, results as report
from recipe_jax import words
from recipe_jax.verdicts import StageResult, Verdict
from recipe_jax.runs import driver, finished as runs

HEADLINE = ('test_accuracy', 'eval_accuracy', 'best_eval_accuracy', 'train_accuracy', 'step',
            'wall_s')
FILES = ['summary.json', 'config.json', 'checkpoints', 'train/report.md']


def extension_verdict(previous: dict | None, config) -> Verdict | None:
  """When a finished run (previous summary) is restarted with a larger num_train_steps."""
  if not previous or not previous.get('finished') or previous['step'] >= config.num_train_steps:
    return None
  old, new = previous['step'], config.num_train_steps
  evidence = {'from_step': old, 'to_step': new, 'schedule': config.optimizer.schedule}
  if config.optimizer.schedule == 'constant' and config.optimizer.warmup_steps < old:
    return Verdict('extended', 'PASS', f'continued from step {old} to {new} at the same constant '
                   'learning rate: the same as training that long from the start', evidence)
  before = optim.learning_rate(config.optimizer, old)
  after = optim.learning_rate(config.optimizer, new)
  lr_then = float(before(old - 1) if callable(before) else before)
  lr_now = float(after(old) if callable(after) else after)
  evidence.update(learning_rate_at_end=lr_then, learning_rate_resumed=lr_now)
  return Verdict('extended', 'WARN', f'continued from step {old} to {new}, but the '
                 f'{config.optimizer.schedule} schedule is stretched to {new} steps: the learning '
                 f'rate jumps from {lr_then:.3g} to {lr_now:.3g} at step {old}. For a result '
                 'you can compare, train a fresh run with this num_train_steps, or continue at '
                 'a constant low rate (squeeze SWA)', evidence)


def verdicts(summary: dict, max_gap: float) -> list:
  if not summary['finished']:
    return [Verdict('finished', 'WARN', f"stopped at step {summary['step']} (SIGTERM or "
                    'Ctrl-C); the same command resumes it', {'step': summary['step']})]
  done = Verdict('finished', 'PASS', f"trained {summary['step']} steps"
                 + (' (stopped early)' if summary['stopped_early'] else ''),
                 {'step': summary['step'], 'stopped_early': summary['stopped_early']})
  found = [done, _gap_verdict(summary, max_gap)]
  if summary.get('test_accuracy') is not None and summary.get('test_examples'):
    found.append(val_vs_test(summary))
  if summary.get('layer_monitor'):
    found.append(layer_health(summary['layer_monitor']))
  return found


def layer_health(watched: dict) -> Verdict:
  """The training monitor's findings (`diagnose/monitor.py`): layers that died or stopped
  getting gradient during the run."""
  if watched['warnings']:
    return Verdict('layer_health', 'WARN', '; '.join(watched['warnings']) +
                   ' (TensorBoard: layers/...)', watched)
  last = watched.get('last') or {}
  ratio = last.get('layers/grad_first_over_last')
  return Verdict('layer_health', 'PASS', 'no layer died or lost its gradient during the run' +
                 (f" (first / last layer gradient {ratio:.2g} at step {last['step']})"
                  if ratio is not None else '') + '; per-layer norms and update ratios in '
                 'TensorBoard under layers/', watched)


def val_vs_test(summary: dict, z_max: float = 3.0) -> Verdict:
  """WARN when test accuracy is below validation accuracy by more than the binomial noise of
  the two splits' sizes allows (z > z_max): the test split is not what validation measured."""
  val, test = summary['eval_accuracy'], summary['test_accuracy']
  n_val, n_test = summary['val_examples'], summary['test_examples']
  z = noise.splits_apart(val, n_val, test, n_test)
  evidence = {'eval_accuracy': val, 'test_accuracy': test, 'val_examples': n_val,
              'test_examples': n_test, 'z': float(z), 'z_max': z_max}
  line = (f'test accuracy {test:.1%} against validation {val:.1%} ({n_test} and {n_val} '
          f'examples: {z:.1f} standard errors apart)')
  if z > z_max:
    return Verdict('val_vs_test', 'WARN', f'{line}: more than chance allows. Typical causes: '
                   'test labels coded differently (a class mapping shows as a clean '
                   'off-diagonal in the test confusion matrix: --config.stage=evaluate '
                   '--config.analysis.split=test), test inputs preprocessed differently, or a '
                   'distribution shift (the inspect stage compares the splits)', evidence)
  return Verdict('val_vs_test', 'PASS', f'{line}: within chance', evidence)


def _gap_verdict(summary: dict, max_gap: float) -> Verdict:
  gap = summary['train_accuracy'] - summary['eval_accuracy']
  evidence = {'train_accuracy': summary['train_accuracy'],
              'eval_accuracy': summary['eval_accuracy'], 'gap': gap, 'max_gap': max_gap}
  if gap > max_gap:
    return Verdict('train_val_gap', 'WARN', f'training accuracy exceeds validation by '
                   f'{words.beside(gap, max_gap)} (> {max_gap:g}): the model overfits; regularise (recipe step 4: '
                   'augmentation, weight decay, dropout, more data)', evidence)
  return Verdict('train_val_gap', 'PASS', 'training - validation accuracy = '
                 f'{words.beside(gap, max_gap)} (warn above {max_gap:g})', evidence)


def gap_from_labels(gap: Verdict, analysed: list) -> Verdict:
  """A train-validation gap that a block of the file's rows with other labels explains (found
  by the error analysis on validation): the labels, not overfitting, so no regularisation
  advice. Only the part the block explains: where validation accuracy on the rows whose
  labels the model agrees with (the block, or the rest) is still more than `max_gap` under
  training accuracy, the rest is overfitting."""
  confused = next((v for v in analysed if v.check == 'confusions'), None)
  structure = confused.evidence.get('label_structure') if confused else None
  if gap.status != 'WARN' or not structure or not structure['block']:
    return gap
  found = data_checks.describe_structure({**structure, 'dominant_pairs': []})
  e = gap.evidence
  block = structure['block']
  agreeing = max(block['accuracy_inside'], block['accuracy_outside'])  # the well-labelled side
  left = e['train_accuracy'] - agreeing
  head = f"training accuracy exceeds validation by {e['gap']:.3f} (> {e['max_gap']:g})"
  evidence = {**e, 'label_structure': structure, 'accuracy_where_labels_agree': agreeing,
              'gap_where_labels_agree': left}
  if left <= e['max_gap']:
    return Verdict('train_val_gap', 'WARN', f'{head}, and the gap comes from the labels, not '
                   f'from overfitting: on validation, {found}; on the rows whose labels agree '
                   f'with the model, validation accuracy is {agreeing:.3f}, within '
                   f'{e["max_gap"]:g} of training. Fix the labels first (the inspect stage '
                   'names the rows); regularising would only fit them worse',
                   evidence, cause='gap_from_labels')
  return Verdict('train_val_gap', 'WARN', f'{head}; part of it comes from the labels: on '
                 f'validation, {found}. On the rows whose labels agree with the model, '
                 f'validation accuracy is still {agreeing:.3f}, {left:.3f} under training: the '
                 'model overfits too. Fix the labels first (the inspect stage names the rows), '
                 'then regularise (recipe step 4)', evidence,
                 cause='gap_from_labels_and_overfitting')


def training_curves(workdir: str, history: list) -> str | None:
  """DIR/train/curves.png: training and validation loss and accuracy at every eval."""
  if not history:
    return None
  path = os.path.join(workdir, 'train', 'curves.png')
  column = lambda key: [h.get(key, float('nan')) for h in history]
  steps = column('step')
  plots.loss_and_accuracy(path, steps, column('train_loss'), column('train_accuracy'), 'step',
                          series={'validation': (steps, column('eval_loss'),
                                                 column('eval_accuracy'))})
  return path


def run(config, workdir: str) -> StageResult:
  title = f'Train: {config.model.name} on {config.dataset.name}'
  extended = extension_verdict(runs.summary(workdir), config)
  exp = experiment.build(config)
  try:
    summary = driver.run_training(config, workdir, exp=exp)
  except DivergenceError as e:
    report.finish(workdir, StageResult('train', [Verdict('finished', 'FAIL', str(e))], {},
                                       FILES[1:]), title)
    raise
  metrics = {k: summary[k] for k in HEADLINE if summary.get(k) is not None}
  found, images, looked_at = verdicts(summary, config.max_train_val_gap), {}, list(FILES)
  curves = training_curves(workdir, summary['history'])
  if curves:
    looked_at.append('train/curves.png')
  if extended:
    found.append(extended)
  if summary['finished'] and config.analysis.enabled:
    state = runs.restore_final_state(exp, workdir)
    analysed, images, _ = error_analysis.analyse(exp, state, workdir, summary['history'])
    found = [gap_from_labels(v, analysed) if v.check == 'train_val_gap' else v for v in found]
    found += analysed
    looked_at += error_analysis.written(workdir, images)
  if curves:
    images['finished'] = [curves]
  result = StageResult('train', found, metrics, looked_at, finished=summary['finished'])
  return report.finish(workdir, result, title, images)
