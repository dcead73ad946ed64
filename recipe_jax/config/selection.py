"""Choosing the best run: the metrics that may select (validation only: the test split is
looked at once, at the end, never to choose) and the direction in which each one is better."""

DIRECTIONS = {'eval_accuracy': 'maximize', 'best_eval_accuracy': 'maximize',
              'eval_loss': 'minimize'}


def describe() -> str:
  return ', '.join(f"{m} ({'higher' if d == 'maximize' else 'lower'} is better)"
                   for m, d in DIRECTIONS.items())


def sign(metric: str) -> int:
  """+1 where higher is better, -1 where lower is."""
  return 1 if DIRECTIONS[metric] == 'maximize' else -1


def best(items, metric: str, value=lambda item: item):
  """The item whose `value(item)` of `metric` is best."""
  return max(items, key=lambda item: sign(metric) * value(item))


def ranked(items, metric: str, value=lambda item: item) -> list:
  """Best first."""
  return sorted(items, key=lambda item: -sign(metric) * value(item))


def best_so_far(values, metric: str) -> list:
  """The running best of a sequence of metric values."""
  out, current = [], None
  for v in values:
    current = v if current is None or sign(metric) * v > sign(metric) * current else current
    out.append(current)
  return out
