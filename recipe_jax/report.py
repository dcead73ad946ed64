"""Verdicts (one JSON shape for every stage), the console lines, and a readable report.md."""
import dataclasses
import json
import os

import numpy as np
from absl import logging

from recipe_jax.errors import ChecksFailed

STATUSES = ('PASS', 'WARN', 'FAIL')


@dataclasses.dataclass
class Verdict:
  check: str
  status: str  # PASS | WARN | FAIL
  summary: str
  evidence: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got '{self.status}'")


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


def write(directory: str, title: str, verdicts: list, images: dict | None = None) -> None:
  """verdicts.json, report.md (images inline, under the check that made them), console lines."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'verdicts.json'), 'w') as f:
    json.dump([_jsonable(dataclasses.asdict(v)) for v in verdicts], f, indent=2)
  counts = {s: sum(v.status == s for v in verdicts) for s in STATUSES}
  lines = [f'# {title}', '', ' · '.join(f'{n} {s}' for s, n in counts.items()), '']
  for v in verdicts:
    lines += [f'## {v.status} {v.check}', '', v.summary, '']
    for image in (images or {}).get(v.check, []):
      lines += [f'![{v.check}]({os.path.basename(image)})', '']
  with open(os.path.join(directory, 'report.md'), 'w') as f:
    f.write('\n'.join(lines))
  for v in verdicts:
    logging.info('%-4s %-22s %s', v.status, v.check, v.summary)


def raise_if_failed(verdicts: list, directory: str, headline: str | None = None) -> None:
  """ChecksFailed (exit code 1) when any verdict FAILed, pointing at the report."""
  failed = [v.check for v in verdicts if v.status == 'FAIL']
  if failed:
    headline = headline or f'{len(failed)} check(s) FAILed: {", ".join(failed)}'
    raise ChecksFailed(f'{headline}; see {os.path.join(directory, "report.md")}')
