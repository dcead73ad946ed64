"""python -m recipe_jax.worklog DIR [--format=md|html] [--out=FILE]

Every run under DIR (local or gs://), oldest first: when, which stage, its status, what its
config changed (from the defaults and from the run before), its headline and checks, size on
disk, wall time and commit (`runs/worklog.py`). Exit 2 with one line when DIR is not a folder
or holds no run.
"""
import argparse
import sys

from recipe_jax import files
from recipe_jax.errors import UserError
from recipe_jax.runs import worklog


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m recipe_jax.worklog',
                                   description='Every run under a folder, oldest first.')
  parser.add_argument('root', help='a folder of runs: local or gs://BUCKET/PATH')
  parser.add_argument('--format', choices=('md', 'html'), default='md')
  parser.add_argument('--out', help='write here instead of the console')
  args = parser.parse_args(argv)
  try:
    found = worklog.rows(args.root)
  except UserError as e:
    print(f'recipe_jax: error: {e}', file=sys.stderr)
    return UserError.exit_code
  text = worklog.markdown(found) if args.format == 'md' else worklog.as_html(found, args.root)
  if args.out:
    files.write_text(args.out, text)
    print(f'{len(found)} runs: {args.out}')
  else:
    sys.stdout.write(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
