"""Errors that end a run with a one-line message and a fixed exit code (no traceback)."""


class UserError(Exception):
  """A bad config, name or path: the message says what was wrong and what is allowed."""
  exit_code = 2


class RefusedRun(UserError):
  """A start refused because its run directory holds a run of another config or other data.
  `directory`: that run directory (the refusal is noted there for the worklog)."""

  def __init__(self, message: str, directory: str):
    super().__init__(message)
    self.directory = directory


class DivergenceError(Exception):
  """The loss went non-finite or exploded; checkpoints up to the last good step are kept."""
  exit_code = 3


class ChecksFailed(Exception):
  """A stage's check gave FAIL; its report says which and why. Lets CI and sweeps gate on it."""
  exit_code = 1


class StorageUnavailable(Exception):
  """The run directory's storage (gs://) or a study's database stopped answering mid-run, and
  still did after bounded retries. What was saved stays (checkpoints, finished stages): the
  same command resumes from it once the storage answers."""
  exit_code = 4
