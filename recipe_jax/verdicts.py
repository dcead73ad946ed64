"""What every stage returns: verdicts (one JSON shape for every stage) and one `StageResult`,
as `DIR/<stage>/result.json` holds them. The bottom of the package: the checks build these,
report/ renders them.
"""
import dataclasses

import numpy as np

from recipe_jax import files
from recipe_jax.causes import CAUSES

STATUSES = ('PASS', 'WARN', 'FAIL')


@dataclasses.dataclass
class Verdict:
  check: str
  status: str  # PASS | WARN | FAIL
  summary: str  # the check's own sentence; `words.sentence` adds what diagnosis found
  evidence: dict = dataclasses.field(default_factory=dict)  # the numbers it decided on
  cause: str | None = None  # a code of causes.CAUSES: what the check (or diagnosis) names
  where: list | dict | str | None = None  # the layers, rows, classes or features it names

  def __post_init__(self):
    if self.status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got '{self.status}'")
    if self.cause is not None and self.cause not in CAUSES:
      raise ValueError(f"cause '{self.cause}' is not in causes.CAUSES")


def jsonable(value):
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


@dataclasses.dataclass
class StageResult:
  stage: str
  verdicts: list  # of Verdict
  metrics: dict  # the stage's headline numbers, e.g. {'test_accuracy': 0.92}
  files: list  # paths the stage wrote that a person would open, relative to the workdir
  finished: bool = True  # False when preempted: a restart continues the stage
  images: dict = dataclasses.field(default_factory=dict)  # check -> pictures, workdir-relative

  def counts(self) -> dict:
    return count(self.verdicts)

  def to_json(self) -> dict:
    return jsonable({**dataclasses.asdict(self), 'counts': self.counts()})


def count(verdicts: list) -> dict:
  """{'PASS': n, 'WARN': n, 'FAIL': n}."""
  return {s: sum(v.status == s for v in verdicts) for s in STATUSES}


def read_result(path: str) -> StageResult:
  """A `result.json` back as a StageResult."""
  raw = files.read_json(path)
  raw.pop('counts', None)
  raw['verdicts'] = [Verdict(**v) for v in raw['verdicts']]
  return StageResult(**raw)
