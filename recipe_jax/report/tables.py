"""The one table writer of the multi-run stages: a CSV of their rows (every column, for a
spreadsheet) and the lines of a Markdown table (the columns a person reads, in results.md)."""
import csv

from recipe_jax import files


def write_csv(path: str, rows: list, columns: list | None = None) -> None:
  """`rows` (dicts) as CSV; `columns` picks and orders them (default: the first row's keys)."""
  with files.writing_text(path) as f:
    writer = csv.DictWriter(f, columns or (list(rows[0]) if rows else []),
                            extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)


def markdown(header: list, rows: list) -> list:
  """The lines of a Markdown table: `header` (column names), then `rows` (lists of cells)."""
  line = lambda cells: '| ' + ' | '.join(str(c) for c in cells) + ' |'
  return [line(header), '|---' * len(header) + '|', *(line(r) for r in rows)]
