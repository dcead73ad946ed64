"""A dataset as the pipeline uses it: train / validation / test splits as float32 inputs and
int32 labels, with a validation split that never depends on the seed, a nested training subset,
and normalisation by the training split's channel statistics. With `dataset.pipeline=grain` the
training inputs stay in storage (`Rows`) and are read row by row.
"""
import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from recipe_jax import files
from recipe_jax.data import sources
from recipe_jax.errors import UserError

SUBSET_SEED_BASE = 7919  # dataset.train_fraction's subsets: their own stream of randomness
VAL_SPLIT_SEED = 0  # fixed, so changing config.seed never changes which examples are validation


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: np.ndarray  # per-channel statistics of the training split (before normalising)
  std: np.ndarray
  # Where each example comes from: its row in the source split the user has (the .npz
  # arrays, or the TFDS split in reading order). Validation is carved from source 'train'.
  train_rows: np.ndarray
  val_rows: np.ndarray
  test_rows: np.ndarray
  tfds_ids: dict | None = None  # source split -> TFDS example ids, where TFDS gives them


SOURCE_SPLIT = {'train': 'train', 'val': 'train', 'test': 'test'}


def source_rows(dataset: Dataset, split: str, indices) -> dict:
  """Evidence that names examples: `indices` into the carved `split` ('train', 'val', 'test')
  as rows of the source split a user can open (and TFDS ids where TFDS gives them)."""
  rows = getattr(dataset, f'{split}_rows')[np.asarray(indices, np.int64)]
  source = SOURCE_SPLIT[split]
  found = {'source_split': source, 'source_rows': rows.tolist()}
  if dataset.tfds_ids and source in dataset.tfds_ids:
    found['tfds_ids'] = [dataset.tfds_ids[source][r] for r in rows]
  return found


def load(cfg, require_finite: bool = True) -> Dataset:
  """The configured dataset: validation split off the source's train split, the training subset,
  the training split's statistics and (optionally) normalisation, the same way for both
  pipelines. With `dataset.pipeline=grain` the training inputs stay in storage as `Rows`.
  `require_finite`: NaN or Inf inputs in any split are a one-line UserError naming the rows
  (the inspect stage, which reports them itself, turns it off)."""
  streamed = resolve(cfg) == 'grain'
  read = sources.lazy_arrays if streamed else sources.arrays
  x_source, y_source, x_test_source, y_test, num_classes, tfds_ids = read(cfg)
  train_idx, val_idx = validation_split(len(y_source), cfg.val_fraction)
  if cfg.train_fraction < 1.0:  # after the validation split: it stays the same
    train_idx = train_idx[nested_subset(len(train_idx), cfg.train_fraction, cfg.subset_seed)]
  raw = Rows(x_source, train_idx, cfg.downsample)
  if cfg.stats_from:  # saves a pass over the whole split (~20 s per GB on 2 cores)
    mean, std = load_input_stats(cfg.stats_from, raw.shape[-1:] if raw.ndim >= 4 else ())
  else:
    start = time.time()
    mean, std = channel_stats(raw if streamed else raw[:])
    if streamed:
      logging.info('statistics of %d streamed training examples in %.1f s', len(train_idx),
                   time.time() - start)
  if require_finite and not (np.isfinite(mean).all() and np.isfinite(std).all()):
    _require_finite(cfg.name, 'train', raw, train_idx)  # a NaN or Inf poisons the statistics
  scale = (mean, std) if cfg.normalize else (np.float32(0), np.float32(1))
  test_idx = np.arange(len(y_test))
  x_train = Rows(x_source, train_idx, cfg.downsample, *scale)
  x_val, x_test = (Rows(x, rows, cfg.downsample, *scale)[:]
                   for x, rows in ((x_source, val_idx), (x_test_source, test_idx)))
  if require_finite:
    for split, x, rows in (('val', x_val, val_idx), ('test', x_test, test_idx)):
      _require_finite(cfg.name, split, x, rows)
  i32 = lambda y: np.asarray(y, np.int32)
  return Dataset(cfg.name, x_train if streamed else x_train[:], i32(y_source[train_idx]), x_val,
                 i32(y_source[val_idx]), x_test, i32(y_test), num_classes, mean, std, train_idx,
                 val_idx, test_idx, tfds_ids)


_WARNED = set()


def non_finite_rows(x, chunk_rows: int = 4096) -> np.ndarray:
  """Indices of the rows of `x` (an array or `Rows`) that hold NaN or Inf, read in chunks."""
  found = []
  for start in range(0, len(x), chunk_rows):
    chunk = np.asarray(x[start:start + chunk_rows])
    flat = chunk.reshape(len(chunk), int(np.prod(chunk.shape[1:])))
    found.append(start + np.flatnonzero(~np.isfinite(flat).all(axis=1)))
  return np.concatenate(found) if found else np.zeros(0, np.int64)


def _require_finite(name: str, split: str, x, rows: np.ndarray) -> None:
  bad = non_finite_rows(x)
  if len(bad):
    raise UserError(f'dataset {name}: x_{split} holds NaN or Inf in {len(bad)} of {len(x)} '
                    f'examples (rows {rows[bad[:5]].tolist()}{"..." if len(bad) > 5 else ""} of '
                    f'the source {SOURCE_SPLIT[split]} split); drop or replace them (the inspect '
                    'stage lists them all)')


def check_labels(dataset: Dataset) -> None:
  """A training split of one class (a TFDS dataset, a small train_fraction) is a one-line
  UserError: there is nothing to classify. Logs, once per process, the classes that validation
  or test hold and training never shows: the net cannot learn them."""
  seen = set(np.unique(dataset.y_train).tolist())
  if len(seen) < 2:
    raise UserError(f'dataset {dataset.name}: the training split holds one class ({seen}) in '
                    'all its examples: there is nothing to classify (a larger '
                    'dataset.train_fraction, or data with at least 2 classes)')
  for split in ('val', 'test'):
    unseen = sorted(set(np.unique(getattr(dataset, f'y_{split}')).tolist()) - seen)
    if unseen and (dataset.name, split) not in _WARNED:
      _WARNED.add((dataset.name, split))
      count = int(np.isin(getattr(dataset, f'y_{split}'), unseen).sum())
      logging.warning('dataset %s: %d %s examples are of classes %s, which the training split '
                      'never shows: the net cannot learn them, and %s accuracy counts them as '
                      'errors', dataset.name, count, split, unseen[:10], split)


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
  """Averages blocks of `factor` along the length of 1-D inputs (N, L) or the height and
  width of images (N, H, W[, C]): a smaller input, one of the recipe's regularisers."""
  spatial = 1 if x.ndim == 2 else 2
  shape = x.shape[1:1 + spatial]
  if any(size % factor for size in shape):
    raise UserError(f'dataset.downsample={factor} must divide the input size {shape}')
  blocked = x.reshape(x.shape[0], *[d for size in shape for d in (size // factor, factor)],
                      *x.shape[1 + spatial:])
  return blocked.mean(axis=tuple(2 + 2 * i for i in range(spatial)))


def validation_split(num_examples: int, val_fraction: float):
  """Sorted (train_indices, val_indices); the same for every run and every seed."""
  order = np.random.default_rng(VAL_SPLIT_SEED).permutation(num_examples)
  num_val = int(round(num_examples * val_fraction))
  return np.sort(order[num_val:]), np.sort(order[:num_val])


def nested_subset(num_examples: int, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of `fraction` of the examples: a pure function of the seed, and a smaller
  fraction's subset lies inside every larger one's (the same permutation's first rows)."""
  if not 0.0 < fraction <= 1.0:
    raise UserError(f'dataset.train_fraction={fraction} must be in (0, 1]')
  order = np.random.default_rng([SUBSET_SEED_BASE, seed]).permutation(num_examples)
  return np.sort(order[:max(1, int(round(fraction * num_examples)))])


def load_input_stats(path: str, shape):
  """mean/std written by the inspect stage (`DIR/inspect/input_stats.json`, or DIR itself)."""
  if not path.endswith('.json'):
    path = files.join(path, 'inspect', 'input_stats.json')
  if not files.exists(path):
    raise UserError(f"dataset.stats_from: '{path}' does not exist; run the inspect stage first "
                    '(configs/<dataset>/inspect.py) and pass its workdir or input_stats.json')
  stats = files.read_json(path)
  channels = int(np.prod(shape, dtype=int))
  if np.size(stats['mean']) != channels or np.size(stats['std']) != channels:
    raise UserError(f"dataset.stats_from: '{path}' has {np.size(stats['mean'])} channel means; "
                    f'this dataset has {channels} channels')
  mean = np.asarray(stats['mean'], np.float32).reshape(shape)
  return mean, np.maximum(np.asarray(stats['std'], np.float32).reshape(shape), 1e-8)


def channel_stats(x, chunk_bytes: int = 1 << 26):
  """Mean and std per channel (last axis) for images, one scalar for 1-D sequences: two passes
  over chunks of rows in float64, so a streamed training split (`Rows`) never needs
  to fit in memory and gets the same statistics as the same rows in memory."""
  image = x.ndim >= 4
  axes = tuple(range(x.ndim - 1)) if image else None
  count = len(x) * int(np.prod(x.shape[1:-1] if image else x.shape[1:], dtype=np.int64))
  chunk_rows = max(1, chunk_bytes // (8 * int(np.prod(x.shape[1:], dtype=np.int64))))
  chunks = lambda: (np.asarray(x[i:i + chunk_rows], np.float64)
                    for i in range(0, len(x), chunk_rows))
  mean = sum(c.sum(axis=axes) for c in chunks()) / count
  std = np.sqrt(sum(np.square(c - mean).sum(axis=axes) for c in chunks()) / count)
  return np.float32(mean) if axes is None else mean.astype(np.float32), np.maximum(
      std, 1e-8).astype(np.float32)


def resolve(dataset_config) -> str:
  """'device' or 'grain' for `dataset.pipeline`; 'auto' streams when the training split (as
  float32) needs more than `dataset.device_memory_fraction` of one device's memory."""
  setting = dataset_config.pipeline
  if setting != 'auto':
    return setting
  needed = sources.train_split_bytes(dataset_config)
  budget = dataset_config.device_memory_fraction * device_memory_bytes()
  chosen = 'grain' if needed > budget else 'device'
  logging.info('dataset.pipeline=auto: the training split needs %.2f GB as float32, %.0f%% of '
               'device memory is %.2f GB: %s', needed / 1e9,
               100 * dataset_config.device_memory_fraction, budget / 1e9, chosen)
  return chosen


def device_memory_bytes() -> int:
  """One device's memory (GPU/TPU), or the host's on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


class Rows:
  """`rows` of a source split, read on demand, downsampled and (with mean and std) normalised
  as float32: `load` builds every split from it, and a streamed training split stays one.
  `np.asarray(rows)` reads all of them."""

  def __init__(self, source, rows: np.ndarray, downsample: int = 1, mean=None, std=None):
    self.source, self.rows, self.factor = source, np.asarray(rows), downsample
    self.mean, self.std = mean, std
    example = self._read(self.rows[:1])
    self.shape, self.ndim = (len(self.rows), *example.shape[1:]), example.ndim
    self.dtype = np.float32

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, index):
    return self._read(self.rows[index])

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[:], dtype)

  def _read(self, source_rows):
    x = self.source[np.asarray(source_rows)]
    if self.factor > 1:
      x = downsample(x, self.factor)
    if self.mean is None:
      return x  # raw: for the statistics
    return np.asarray((x - self.mean) / self.std, np.float32)


def split_arrays(dataset, split: str):
  if split not in ('val', 'test', 'train'):
    raise UserError(f"analysis.split='{split}'; use val (default), test or train")
  return getattr(dataset, f'x_{split}'), getattr(dataset, f'y_{split}')
