"""What a registered check is: its name, the stages that give it, what it measures and when it
FAILs or WARNs (the docs' table is made from these), the cause codes it can name, the tasks it
applies to, its advice (act or ignore, and why) for a WARN or FAIL, and, for a family whose
stage runs its checks from the registry, the function that measures and decides."""
import dataclasses
from typing import Callable

TASKS = ('classification',)


@dataclasses.dataclass(frozen=True)
class Check:
  name: str  # the verdict's check name; a family of names ends with '_' ('variant_')
  stages: tuple  # the stages whose results carry it
  measures: str
  decides: str  # when it FAILs or WARNs
  causes: tuple = ()  # codes of causes.CAUSES its verdicts can carry
  tasks: tuple = TASKS
  # (status, evidence with 'cause') -> (act, why), or None to fall back to the general rule
  advice: Callable | None = None
  # (the family's measurements) -> Verdict, or None when there is nothing to judge
  run: Callable | None = None

  def matches(self, check: str) -> bool:
    return check.startswith(self.name) if self.name.endswith('_') else check == self.name
