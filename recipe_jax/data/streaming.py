"""The `grain` input pipeline: training batches read from storage step by step, for training
sets larger than device memory (`dataset.pipeline`).

The training split stays where it is (an `.npz` member memory-mapped, or a TFDS dataset
prepared as array_record through `tfds.data_source`); `Rows` reads and normalises the rows a
batch needs. A step's batch is the same slice of the same `data.epoch_permutation` as on the
device path, so both paths give the same batches for the same seed. grain's element is a
whole batch, a pure function of the step: worker threads read the next batches ahead of the
loop. A resumed run starts the iterator at the state's step: nothing of the input pipeline
needs saving. Validation and test splits are read into memory, as on the device path.
"""
import functools
import os
import time
import zipfile

import jax
import numpy as np
from absl import logging

from recipe_jax.data import datasets as data_lib
from recipe_jax.errors import UserError

def resolve(dataset_config) -> str:
  """'device' or 'grain' for `dataset.pipeline`; 'auto' streams when the training split (as
  float32) needs more than `dataset.device_memory_fraction` of one device's memory."""
  setting = dataset_config.pipeline
  if setting != 'auto':
    return setting
  needed = train_split_bytes(dataset_config)
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


def train_split_bytes(cfg) -> int:
  """The source training split's size as float32, read from headers, not from the data."""
  if cfg.name.startswith(data_lib.NPZ_PREFIX):
    shape = npz_member(cfg.name[len(data_lib.NPZ_PREFIX):], 'x_train').shape
  else:
    builder = data_lib.prepared_builder(cfg, download=False)
    shape = (builder.info.splits['train'].num_examples, *example_shape(builder, cfg))
  return 4 * int(np.prod(shape, dtype=np.int64))


def example_shape(builder, cfg) -> tuple:
  """The input feature's shape, which batching needs fixed."""
  shape = tuple(builder.info.features[cfg.image_key].shape)
  if None in shape:
    raise UserError(f"TFDS dataset '{cfg.name}' has inputs of varying shape {shape}; batches "
                    'need one shape: take a resized variant (e.g. imagenet_resized/64x64)')
  return shape


def npz_member(path: str, key: str):
  """An array of an `.npz` without reading it into memory: an uncompressed member (np.savez)
  is memory-mapped where it lies inside the zip; a compressed one (np.savez_compressed) is
  extracted once to `PATH.arrays/KEY.npy` and memory-mapped from there."""
  path = os.path.expanduser(path)
  data_lib.check_npz(path)
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(f'{key}.npy')
    if info.compress_type == zipfile.ZIP_STORED:
      shape, fortran, dtype, header_size = data_lib.npz_header(archive, key)
      with open(path, 'rb') as f:  # the member's data starts after its local file header
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), np.uint16)
      offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header_size
      return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape,
                       order='F' if fortran else 'C')
    extracted = os.path.join(f'{path}.arrays', f'{key}.npy')
    if not os.path.isfile(extracted) or os.path.getmtime(extracted) < os.path.getmtime(path):
      os.makedirs(os.path.dirname(extracted), exist_ok=True)
      logging.info('extracting %s from the compressed %s to %s (once)', key, path, extracted)
      tmp = f'{extracted}.{os.getpid()}.tmp'
      with archive.open(info) as member, open(tmp, 'wb') as out:
        while chunk := member.read(1 << 24):
          out.write(chunk)
      os.replace(tmp, extracted)
  return np.load(extracted, mmap_mode='r')


class TfdsRows:
  """Random access to one feature of a TFDS split prepared as array_record, by row."""

  def __init__(self, source, key: str, example_shape):
    self.source, self.key = source, key
    self.shape = (len(source), *example_shape)
    self.ndim = len(self.shape)

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, rows):
    rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
    if not len(rows):
      return np.zeros((0, *self.shape[1:]))
    return np.stack([e[self.key] for e in self.source.__getitems__(rows.tolist())])


class Rows:
  """The training split, read lazily: `rows` of `source`, downsampled and normalised as the
  device path does it (`data.load`), as float32. `np.asarray(rows)` reads all of them."""

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
      x = data_lib.downsample(x, self.factor)
    if self.mean is None:
      return x  # raw: for the statistics
    return np.asarray((x - self.mean) / self.std, np.float32)


def load(cfg) -> data_lib.Dataset:
  """`data.load` for `pipeline=grain`: the same splits, statistics and normalisation, with the
  training inputs left in storage."""
  x_source, y_all, x_test, y_test, num_classes, tfds_ids = _sources(cfg)
  train_idx, val_idx = data_lib.validation_split(len(y_all), cfg.val_fraction)
  if cfg.train_fraction < 1.0:
    train_idx = train_idx[data_lib.nested_subset(len(train_idx), cfg.train_fraction,
                                                 cfg.subset_seed)]
  raw = Rows(x_source, train_idx, cfg.downsample)
  if cfg.stats_from:  # saves a pass over the whole split (~20 s per GB on 2 cores)
    mean, std = data_lib.load_input_stats(cfg.stats_from, raw.shape[-1:] if raw.ndim >= 4 else ())
  else:
    start = time.time()
    mean, std = data_lib.channel_stats(raw)
    logging.info('statistics of %d streamed training examples in %.1f s', len(train_idx),
                 time.time() - start)
  scale = (mean, std) if cfg.normalize else (np.float32(0), np.float32(1))
  x_val, x_test = (Rows(source, rows, cfg.downsample, *scale)[:] for source, rows in
                   ((x_source, val_idx), (x_test, np.arange(len(y_test)))))
  return data_lib.Dataset(cfg.name, Rows(x_source, train_idx, cfg.downsample, *scale),
                          np.asarray(y_all[train_idx], np.int32), x_val,
                          np.asarray(y_all[val_idx], np.int32), x_test,
                          np.asarray(y_test, np.int32), num_classes, mean, std, train_idx,
                          val_idx, np.arange(len(y_test)), tfds_ids)


def _sources(cfg):
  if cfg.name.startswith(data_lib.NPZ_PREFIX):
    path = cfg.name[len(data_lib.NPZ_PREFIX):]
    num_classes = data_lib.check_npz(os.path.expanduser(path))
    x_train, x_test = npz_member(path, 'x_train'), npz_member(path, 'x_test')
    y_train, y_test = (np.asarray(npz_member(path, k)) for k in ('y_train', 'y_test'))
    return x_train, y_train, x_test, y_test, num_classes, None
  return tfds_sources(data_lib.prepared_builder(cfg, download=False), cfg)


def tfds_sources(builder, cfg):
  """The TFDS dataset's training inputs as random-access `TfdsRows`, the test inputs and all
  labels in memory; the image feature is not decoded to read the labels."""
  import tensorflow_datasets as tfds
  features = builder.info.features
  arrays = []
  for split in data_lib.tfds_splits(builder, cfg).values():
    try:
      source = tfds.data_source(cfg.name, split=split, data_dir=cfg.data_dir, download=False)
      labels = tfds.data_source(cfg.name, split=split, data_dir=cfg.data_dir, download=False,
                                decoders={cfg.image_key: tfds.decode.SkipDecoding()})
    except (NotImplementedError, ValueError) as e:  # prepared as tfrecord: no random access
      if 'format' not in str(e).lower():
        raise
      raise UserError(
          f"TFDS dataset '{cfg.name}' is prepared without array_record, which "
          f"dataset.pipeline=grain reads; prepare it with `tfds build {cfg.name} "
          f'--file_format=array_record` (into a new data_dir) or use dataset.pipeline=device'
      ) from None
    y = np.array([e[cfg.label_key] for e in labels.__getitems__(list(range(len(labels))))])
    arrays += [TfdsRows(source, cfg.image_key, example_shape(builder, cfg)), y]
  x_train, y_train, x_test, y_test = arrays
  return (x_train, y_train, x_test[:], y_test, features[cfg.label_key].num_classes, None)


def batches(dataset: data_lib.Dataset, config, first_step: int):
  """A grain iterator over this process's rows of every step's batch, (x, y) as numpy, from
  `first_step` on. Each process reads only its shard of the batch (`ShardByJaxProcess`)."""
  import grain  # here, not at the top: the device path does not pay for its import
  shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  local = config.batch_size // shard.shard_count
  low = shard.shard_index * local
  num_examples = len(dataset.y_train)
  per_epoch = data_lib.steps_per_epoch(num_examples, config.batch_size)
  order = functools.lru_cache(maxsize=4)(
      lambda epoch: data_lib.epoch_permutation(config.seed, epoch, num_examples))

  def read(step):
    epoch, index = divmod(step, per_epoch)
    rows = order(epoch)[index * config.batch_size + low:][:local]
    return dataset.x_train[rows], dataset.y_train[rows]

  options = grain.ReadOptions(num_threads=config.dataset.grain_threads,
                              prefetch_buffer_size=config.dataset.prefetch_batches)
  iterator = iter(grain.MapDataset.range(config.num_train_steps).map(read)
                  .to_iter_dataset(options))
  iterator.set_state({'next_index': first_step})
  return iterator


def to_devices(sharding, batch, batch_size: int):
  """This process's rows of a batch as one global array per leaf."""
  if jax.process_count() == 1:  # the rows are the whole batch: one transfer (~25 us less)
    return jax.device_put(batch, sharding)
  return tuple(jax.make_array_from_process_local_data(sharding, leaf,
                                                      (batch_size, *leaf.shape[1:]))
               for leaf in batch)
