"""The quickstart's install has no TensorFlow, and the main job's paths work without it: the
embedded datasets prepared from scratch (as array_record), a train run on each pipeline, and
an .npz file. `.ci/run` runs it right after README's first install, before the test extra
(which brings TensorFlow for the tfrecord tests) is installed:

  python scripts/check_without_tensorflow.py
"""
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(workdir: str, *flags: str) -> None:
  command = [sys.executable, '-m', 'recipe_jax.main', '--config=configs/digits/cnn.py',
             f'--workdir={workdir}', '--config.num_train_steps=60', *flags]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  if done.returncode:
    sys.exit(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  print('ok:', ' '.join(flags) or 'digits, device pipeline')


def main():
  if importlib.util.find_spec('tensorflow') is not None:
    sys.exit('TensorFlow is installed: this check needs the install without it (pip install -e .)')
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, 'tfds')  # empty: the embedded datasets are prepared here
    train(os.path.join(tmp, 'device'), f'--config.dataset.data_dir={data_dir}')
    train(os.path.join(tmp, 'grain'), f'--config.dataset.data_dir={data_dir}',
          '--config.dataset.pipeline=grain')
    train(os.path.join(tmp, 'mnist1d'), f'--config.dataset.data_dir={data_dir}',
          '--config.dataset.name=mnist1d', '--config.model.name=mlp')
    rng = np.random.default_rng(0)
    path = os.path.join(tmp, 'data.npz')
    np.savez(path, x_train=rng.normal(size=(300, 8, 8, 1)), y_train=rng.integers(0, 3, 300),
             x_test=rng.normal(size=(60, 8, 8, 1)), y_test=rng.integers(0, 3, 60))
    train(os.path.join(tmp, 'npz'), f'--config.dataset.name=npz:{path}', '--config.batch_size=30')
  print('without TensorFlow: every path works')


if __name__ == '__main__':
  main()
