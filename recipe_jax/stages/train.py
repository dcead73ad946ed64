"""stage='train': train the configured model, keep checkpoints, write config.json and summary.json.

Verdicts: `finished` (PASS; WARN when preempted, to be resumed; FAIL when it diverged) and
`train_val_gap` (WARN when the training accuracy exceeds validation by more than
`max_train_val_gap`: the model overfits, regularise).
"""
import json
import os

import jax

from recipe_jax import experiment, report, trainer
from recipe_jax.errors import DivergenceError
from recipe_jax.report import StageResult, Verdict

HEADLINE = ('test_accuracy', 'eval_accuracy', 'best_eval_accuracy', 'train_accuracy', 'step',
            'wall_s')
FILES = ['summary.json', 'config.json', 'checkpoints', 'train/report.md']


def write_json(path: str, obj) -> None:
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)  # never leave a half-written file behind


def run_training(config, workdir: str, on_eval=None) -> dict:
  """Trains (or resumes) the run in workdir and returns its summary (summary.json)."""
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  summary = trainer.train_and_evaluate(experiment.build(config), workdir, on_eval)
  write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def verdicts(summary: dict, max_gap: float) -> list:
  if not summary['finished']:
    return [Verdict('finished', 'WARN', f"stopped at step {summary['step']} (SIGTERM); the same "
                    'command resumes it', {'step': summary['step']})]
  done = Verdict('finished', 'PASS', f"trained {summary['step']} steps"
                 + (' (stopped early)' if summary['stopped_early'] else ''),
                 {'step': summary['step'], 'stopped_early': summary['stopped_early']})
  gap = summary['train_accuracy'] - summary['eval_accuracy']
  evidence = {'train_accuracy': summary['train_accuracy'],
              'eval_accuracy': summary['eval_accuracy'], 'gap': gap, 'max_gap': max_gap}
  if gap > max_gap:
    return [done, Verdict('train_val_gap', 'WARN', f'training accuracy exceeds validation by '
                          f'{gap:.3f} (> {max_gap:g}): the model overfits; regularise (recipe '
                          'step 4: augmentation, weight decay, dropout, more data)', evidence)]
  return [done, Verdict('train_val_gap', 'PASS', f'training - validation accuracy = {gap:.3f} '
                        f'(warn above {max_gap:g})', evidence)]


def run(config, workdir: str) -> StageResult:
  title = f'Train: {config.model.name} on {config.dataset.name}'
  try:
    summary = run_training(config, workdir)
  except DivergenceError as e:
    report.finish(workdir, StageResult('train', [Verdict('finished', 'FAIL', str(e))], {},
                                       FILES[1:]), title)
    raise
  metrics = {k: summary[k] for k in HEADLINE if summary.get(k) is not None}
  result = StageResult('train', verdicts(summary, config.max_train_val_gap), metrics, FILES,
                       finished=summary['finished'])
  return report.finish(workdir, result, title)
