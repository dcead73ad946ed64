"""A train run with its workdir on gs:// (a local GCS emulator, tests/helpers/gcs_emulator.py) against
the same run with a local workdir: the whole process's wall time, as a ratio, median of repeats.

  python scripts/bench_gcs.py [--config=configs/mnist1d/cnn.py] [--repeats=3]

Each run is a fresh process with a fresh workdir; the dataset and the compilation cache are
warm for both, so the ratio is what the run directory's storage costs: checkpoints (orbax over
tensorstore), the log and TensorBoard events copied up at every checkpoint, summaries, report
and pictures.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))
from helpers import gcs_emulator  # noqa: E402


def timed_run(workdir: str, config: str, env: dict) -> float:
  start = time.time()
  subprocess.run([sys.executable, '-m', 'recipe_jax.main', f'--config={config}',
                  f'--workdir={workdir}'], check=True, cwd=REPO, env={**os.environ, **env},
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.time() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='configs/mnist1d/cnn.py')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  with gcs_emulator.running() as host, tempfile.TemporaryDirectory() as local:
    env = {'STORAGE_EMULATOR_HOST': host}
    timed_run(os.path.join(local, 'warm'), args.config, env)  # data prepared, programs cached
    times = {'local': [], 'gs': []}
    for i in range(args.repeats):
      times['local'].append(timed_run(os.path.join(local, f'run{i}'), args.config, env))
      times['gs'].append(timed_run(f'gs://bucket/run{i}', args.config, env))
      print(f"repeat {i}: local {times['local'][-1]:.2f} s, gs {times['gs'][-1]:.2f} s",
            flush=True)
  ratios = [g / l for g, l in zip(times['gs'], times['local'])]
  print(f"local: median {statistics.median(times['local']):.2f} s; gs:// (emulator): median "
        f"{statistics.median(times['gs']):.2f} s; ratio gs/local median "
        f'{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})')


if __name__ == '__main__':
  main()
