"""stage='overfit': recipe step 3, get a model big enough to fit the training set.

Trains like stage='train' (checkpoints, resume, summary.json), with the settings the recipe
trusts: Adam 3e-4, a constant learning rate, no regularisation. Then evaluates the whole
training split and gives a verdict: can this model fit it? If not, it names the capacity
increase to try. Writes overfit/{verdicts.json, report.md, result.json}; a FAIL exits with code 1.
"""
import os

from recipe_jax import files
from recipe_jax.model import models
from recipe_jax.report import results as report
from recipe_jax.verdicts import StageResult, Verdict, read_result
from recipe_jax.runs import driver, store as run_store

TRUSTED = {'optimizer.name': 'adam', 'optimizer.learning_rate': 3e-4,
           'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 0,
           'optimizer.weight_decay': 0.0}


def trusted_defaults(config, found_learning_rate: float | None = None) -> Verdict:
  """WARN for each setting that differs from what the recipe trusts at this step. A learning
  rate the lr_find stage found (in this workdir) is trusted as much as Adam's 3e-4."""
  trusted = dict(TRUSTED)
  rate = 'Adam 3e-4'
  if found_learning_rate:
    trusted['optimizer.learning_rate'] = found_learning_rate
    rate = f'Adam at the learning rate lr_find found ({found_learning_rate:.3g})'
  flat = {key: config[key.split('.')[0]][key.split('.')[1]] for key in trusted}
  changed = {key: value for key, value in flat.items() if not _same(value, trusted[key])}
  if changed:
    return Verdict('trusted_defaults', 'WARN', 'differs from the recipe\'s trusted settings: ' +
                   ', '.join(f'{k}={v} (trusted {trusted[k]})' for k, v in changed.items()),
                   {'changed': changed, 'trusted': trusted})
  return Verdict('trusted_defaults', 'PASS', f'{rate}, constant learning rate, no weight decay',
                 {'trusted': trusted})


def _same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float):
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))
  return a == b


def lr_find_suggestion(workdir: str) -> float | None:
  """The learning rate an lr_find stage in this workdir suggested, if it ran."""
  path = files.join(workdir, 'lr_find', 'result.json')
  return read_result(path).metrics.get('suggestion') if files.exists(path) else None


def fits_training_set(summary: dict, target: float, model_name: str, width) -> Verdict:
  accuracy, loss = summary['train_split_accuracy'], summary['train_split_loss']
  evidence = {'train_split_accuracy': accuracy, 'train_split_loss': loss, 'target': target,
              'steps': summary['step'], 'eval_accuracy': summary.get('eval_accuracy')}
  line = (f'whole training split after {summary["step"]} steps: accuracy {accuracy:.4f}, loss '
          f'{loss:.4f} (target accuracy {target:g})')
  if accuracy >= target:
    return Verdict('fits_training_set', 'PASS', f'{line}; the model can overfit, go on to '
                   'regularise', evidence)
  width = width or models.reference_width(model_name)
  wider = f'--config.model.width={2 * width}' if width else 'a wider model'
  return Verdict('fits_training_set', 'FAIL', f'{line}: the model does not fit the training set. '
                 f'Increase capacity: try {wider} (or a deeper model); if the training loss was '
                 f'still falling, --config.num_train_steps={2 * summary["step"]}; the lr_find '
                 'stage tells whether a higher learning rate is safe', evidence)


def run(config, workdir: str) -> StageResult:
  """Trains in DIR/overfit/ (checkpoints, summary.json), beside the stage's report."""
  out = os.path.join(workdir, 'overfit')
  run_store.claim(out, config, 'overfit')  # as main and recipe do: the stage's keys, not the run's
  with config.unlocked():
    config.eval_train_split = True  # so a restart does not see this as a change of config
  summary = driver.run_training(config, out, claim=False)
  files = ['overfit/report.md', 'overfit/summary.json']
  if not summary['finished']:  # preempted: the next start resumes and then judges
    return StageResult('overfit', [], {'step': summary['step']}, files, finished=False)
  verdicts = [trusted_defaults(config, lr_find_suggestion(workdir)),
              fits_training_set(summary, config.overfit.target_accuracy, config.model.name,
                                config.model.width)]
  metrics = {k: summary[k] for k in ('train_split_accuracy', 'train_split_loss',
                                     'eval_accuracy', 'step')}
  return report.finish(workdir, StageResult('overfit', verdicts, metrics, files),
                       f'Overfit: {config.model.name} on {config.dataset.name}')
