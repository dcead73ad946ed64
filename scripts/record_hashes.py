"""Records what a refactor must not change: the final params_sha256 of a set of short runs (and
the numbers of a sanity and an lr_find run), each in a fresh workdir.

  python scripts/record_hashes.py --out=/tmp/hashes_before.json
  python scripts/record_hashes.py --out=/tmp/hashes_after.json --against=/tmp/hashes_before.json

With --against it prints each run's hash beside the recorded one and exits 1 on a difference.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

TWO_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
SHORT = ['--config.num_train_steps=300', '--config.eval_every_steps=100',
         '--config.checkpoint_every_steps=150']
COMPARE = ['--config.compare.seeds=2', '--config.seeds_side_by_side=on',
           '--config.compare.variants={"dropout": {"model.dropout": 0.1}}', *SHORT]

# name -> (config, flags, extra environment)
RUNS = {
    'mnist1d_cnn': ('configs/mnist1d/cnn.py', SHORT, {}),
    'mnist1d_cnn_regularized': ('configs/mnist1d/cnn_regularized.py', SHORT, {}),
    'digits_cnn': ('configs/digits/cnn.py', SHORT, {}),
    'mnist1d_cnn_grain': ('configs/mnist1d/cnn.py', [*SHORT, '--config.dataset.pipeline=grain'],
                          {}),
    'mnist1d_cnn_2_devices': ('configs/mnist1d/cnn.py', SHORT, TWO_DEVICES),
    'mnist1d_cnn_accumulate': ('configs/mnist1d/cnn.py',
                               [*SHORT, '--config.optimizer.accumulate_steps=2'], {}),
    'compare_side_by_side': ('configs/mnist1d/compare.py', COMPARE, {}),
    'digits_sanity': ('configs/digits/sanity.py', [], {}),
    'mnist1d_lr_find': ('configs/mnist1d/lr_find.py', [], {}),
}


def outcome(workdir: str) -> dict:
  """Every params_sha256 under workdir, and the evidence of a stage's checks."""
  found = {}
  for path in sorted(glob.glob(os.path.join(workdir, '**', 'summary.json'), recursive=True)):
    with open(path) as f:
      summary = json.load(f)
    if 'params_sha256' in summary:
      found[os.path.relpath(path, workdir)] = summary['params_sha256']
  for path in sorted(glob.glob(os.path.join(workdir, '**', 'result.json'), recursive=True)):
    with open(path) as f:
      result = json.load(f)
    for verdict in result.get('verdicts', []):
      evidence = {k: v for k, v in verdict.get('evidence', {}).items() if not _timing(k)}
      found[f"{result['stage']} {verdict['check']}"] = [verdict['status'], evidence]
  return found


def _timing(key: str) -> bool:
  return key.endswith('_s') or 'time' in key or 'second' in key


def run(name: str, root: str) -> dict:
  config, flags, env = RUNS[name]
  workdir = os.path.join(root, name)
  command = [sys.executable, '-m', 'recipe_jax.main', f'--config={config}',
             f'--workdir={workdir}', *flags]
  done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
  if done.returncode:
    return {'failed': done.stderr[-2000:]}
  return outcome(workdir)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', required=True)
  parser.add_argument('--against')
  parser.add_argument('--only', nargs='*', default=list(RUNS))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    results = {}
    for name in args.only:
      results[name] = run(name, root)
      print(name, 'done', flush=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  if not args.against:
    return
  with open(args.against) as f:
    before = json.load(f)
  differ = False
  for name, found in results.items():
    for key in sorted(set(found) | set(before.get(name, {}))):
      same = found.get(key) == before.get(name, {}).get(key)
      differ |= not same
      print(f"{'same' if same else 'DIFFERS'}  {name}  {key}")
  sys.exit(1 if differ else 0)


if __name__ == '__main__':
  main()
