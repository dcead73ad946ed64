"""stage='train': train the configured model, keep checkpoints, write config.json and summary.json."""
import json
import os

import jax
from absl import logging

from recipe_jax import train


def write_json(path: str, obj) -> None:
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)  # never leave a half-written file behind


def run(config, workdir: str) -> dict:
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  summary = train.train_and_evaluate(config, workdir)
  write_json(os.path.join(workdir, 'summary.json'), summary)
  logging.info('accuracy: %s', {k: round(v, 4) for k, v in sorted(summary.items())
                                if 'accuracy' in k and v is not None})
  return summary
