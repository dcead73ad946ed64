"""The PyTorch MNIST-1D reference job that scripts/bench_startup.py compares against.

  python scripts/torch_reference_mnist1d.py --data=ARRAYS.npz   (in an environment with torch)

The CNN and training loop of greydanus/mnist1d's notebooks (`ConvBase`, `train_model`): Adam
1e-2, batch 100, 6000 steps, train and test accuracy every 250 steps, a state_dict copy every
1000. Not part of recipe_jax and not installed with it: torch is only needed to measure.
The data is recipe_jax's cached MNIST-1D arrays (`sources.embedded_arrays_path`), so no reading
code is timed on either side beyond loading arrays.
"""
import argparse
import copy
import time

START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class ConvBase(nn.Module):
  def __init__(self, channels=25, linear_in=125, output_size=10):
    super().__init__()
    self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
    self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
    self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
    self.linear = nn.Linear(linear_in, output_size)

  def forward(self, x):
    h = torch.relu(self.conv1(x[:, None, :]))
    h = torch.relu(self.conv2(h))
    h = torch.relu(self.conv3(h))
    return self.linear(h.view(h.shape[0], -1))


def accuracy(model, x, y):
  with torch.no_grad():
    return (model(x).argmax(-1) == y).float().mean().item()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--data', required=True)
  parser.add_argument('--steps', type=int, default=6000)
  args = parser.parse_args()
  torch.manual_seed(42)
  with np.load(args.data) as arrays:
    x_train, y_train = torch.tensor(arrays['x_train']), torch.tensor(arrays['y_train']).long()
    x_test, y_test = torch.tensor(arrays['x_test']), torch.tensor(arrays['y_test']).long()
  model = ConvBase()
  optimizer = torch.optim.Adam(model.parameters(), 1e-2)
  criterion = nn.CrossEntropyLoss()
  checkpoints = []
  loop_start = time.time()
  for step in range(args.steps + 1):
    start = (step * 100) % len(x_train)
    loss = criterion(model(x_train[start:start + 100]), y_train[start:start + 100])
    loss.item()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step % 250 == 0:
      with torch.no_grad():
        criterion(model(x_test), y_test).item()
      accuracy(model, x_train, y_train)
      test_accuracy = accuracy(model, x_test, y_test)
    if step % 1000 == 0:
      checkpoints.append(copy.deepcopy(model.state_dict()))
  end = time.time()
  print(f'torch_import_and_setup_s {loop_start - START:.2f} train_loop_s {end - loop_start:.2f} '
        f'test_accuracy {test_accuracy:.3f}')


if __name__ == '__main__':
  main()
