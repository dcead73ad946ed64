"""Datasets as in-memory arrays, a deterministic validation split, and a (seed, step) batch order.

Every dataset ends up as float32 inputs and int32 labels for train / val / test. The batch
for a step is `epoch_permutation(seed, step // steps_per_epoch)` sliced at the step's offset:
a pure function of (seed, step), so a restarted run sees exactly the batches it would have seen.
"""
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import io
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from recipe_jax import console, files
from recipe_jax.engine import rng
from recipe_jax.errors import UserError

# name -> TFDS version (tfds_builders); 1.1.0: the same examples, prepared as array_record
EMBEDDED = {'mnist1d': '1.1.0', 'digits': '1.1.0'}
ARRAYS_CACHE = 'recipe_jax_arrays.npz'  # an embedded dataset as arrays, beside its TFDS files
NPZ_PREFIX = 'npz:'
NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
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


def load(dataset_config) -> Dataset:
  """Loads, splits off validation and (optionally) normalises the configured dataset. With
  `dataset.pipeline=grain` the training inputs stay in storage (`streaming.load`)."""
  from recipe_jax.data import streaming
  if streaming.resolve(dataset_config) == 'grain':
    return streaming.load(dataset_config)
  x_train, y_train, x_test, y_test, num_classes, tfds_ids = _load_arrays(dataset_config)
  if dataset_config.downsample > 1:
    x_train, x_test = (downsample(x, dataset_config.downsample) for x in (x_train, x_test))
  train_idx, val_idx = validation_split(len(y_train), dataset_config.val_fraction)
  if dataset_config.train_fraction < 1.0:  # after the validation split: it stays the same
    train_idx = train_idx[nested_subset(len(train_idx), dataset_config.train_fraction,
                                        dataset_config.subset_seed)]
  x_val, y_val = x_train[val_idx], y_train[val_idx]
  x_train, y_train = x_train[train_idx], y_train[train_idx]
  mean, std = channel_stats(x_train)
  if dataset_config.stats_from:
    mean, std = load_input_stats(dataset_config.stats_from, mean.shape)
  if dataset_config.normalize:
    x_train, x_val, x_test = [(x - mean) / std for x in (x_train, x_val, x_test)]
  f32, i32 = lambda x: np.asarray(x, np.float32), lambda y: np.asarray(y, np.int32)
  return Dataset(dataset_config.name, f32(x_train), i32(y_train), f32(x_val), i32(y_val),
                 f32(x_test), i32(y_test), num_classes, mean, std, train_idx, val_idx,
                 np.arange(len(y_test)), tfds_ids)


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
  over chunks of rows in float64, so a streamed training split (`streaming.Rows`) never needs
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


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if batch_size > num_examples:
    raise UserError(f'batch_size={batch_size} is larger than the training split '
                    f'({num_examples} examples); use a batch_size <= {num_examples}')
  return num_examples // batch_size  # the remainder of each epoch's permutation is skipped


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the training examples in `epoch`, a pure function of (seed, epoch)."""
  return permutation_from_bits(epoch_bits(seed, epoch, num_examples))


def epoch_bits(seed: int, epoch: int, num_examples: int):
  """The epoch's random bits from the run's jax.random key stream, dispatched on the host CPU
  device and not waited for: the training loop asks for the next epoch's bits one epoch ahead,
  so reading them never waits for the steps queued before them."""
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    return _epoch_bits(seed, epoch, num_examples)


def permutation_from_bits(bits) -> np.ndarray:
  """Ranks the bits with numpy's stable sort (~0.1 ms, where a sort on XLA's CPU backend in the
  middle of training cost ~2.7 ms per epoch). Ties (equal 32-bit draws) are rare and break by
  index."""
  return np.argsort(np.asarray(bits), kind='stable').astype(np.int32)


@functools.partial(jax.jit, static_argnums=(2,))
def _epoch_bits(seed, epoch, num_examples: int):
  return jax.random.bits(rng.stream_key(seed, 'data_order', epoch), (num_examples,), jnp.uint32)


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The training-example indices of `step` (the same slice the jitted train step takes)."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  start = (step % per_epoch) * batch_size
  return epoch_permutation(seed, step // per_epoch, num_examples)[start:start + batch_size]


def check_dataset_name(name: str) -> None:
  """A one-line error unless `name` is embedded, npz:PATH or a dataset TFDS knows."""
  if name in EMBEDDED or name.startswith(NPZ_PREFIX):
    return
  import tensorflow_datasets as tfds
  try:
    tfds.builder_cls(name.split(':')[0].split('/')[0])
  except Exception:  # TFDS raises DatasetNotFoundError with a long multi-line text
    raise UserError(f"unknown dataset '{name}'; use one of {', '.join(EMBEDDED)}, "
                    "'npz:PATH' (arrays x_train, y_train, x_test, y_test) or a TFDS name "
                    "such as mnist, fashion_mnist, cifar10") from None


def identity(cfg) -> dict:
  """What the configured data is, for a run directory's identity (`run_store`): an .npz's
  content hash, or a TFDS dataset's name, version and split sizes."""
  if cfg.name.startswith(NPZ_PREFIX):
    path = os.path.expanduser(cfg.name[len(NPZ_PREFIX):])
    check_npz(path)
    return {'name': cfg.name, 'sha256': _file_sha256(path, os.path.getmtime(path),
                                                     os.path.getsize(path))}
  info = prepared_builder(cfg).info
  return {'name': cfg.name, 'version': str(info.version),
          **{f'{split}_examples': info.splits[split].num_examples
             for split in ('train', cfg.test_split) if split in info.splits}}


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, mtime: float, size: int) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 24):
      digest.update(chunk)
  return digest.hexdigest()


def _load_arrays(cfg):
  if cfg.name.startswith(NPZ_PREFIX):
    return _load_npz(cfg.name[len(NPZ_PREFIX):])
  return _load_tfds(cfg)


def _load_npz(path):
  path = os.path.expanduser(path)
  num_classes = check_npz(path)
  with np.load(path) as npz:
    x_train, y_train, x_test, y_test = (npz[k] for k in NPZ_KEYS)
  return x_train, y_train, x_test, y_test, num_classes, None


def check_npz(path: str) -> int:
  """The number of classes of a valid .npz (see `npz_problem`); a one-line UserError naming the
  file and what is wrong with it otherwise."""
  if not os.path.isfile(path):
    raise UserError(f"npz file '{path}' does not exist; expected a .npz with arrays "
                    f"{', '.join(NPZ_KEYS)}")
  found = _checked_npz(path, os.path.getmtime(path), os.path.getsize(path))
  if isinstance(found, str):
    raise UserError(f"npz file '{path}': {found}")
  return found


@functools.lru_cache(maxsize=16)  # each reader asks once per member; the file is read once
def _checked_npz(path: str, mtime: float, size: int):
  return npz_problem(path) or npz_num_classes(path)


def npz_header(archive: zipfile.ZipFile, key: str):
  """(shape, fortran_order, dtype) of member `key` of an open .npz, read from its header."""
  with archive.open(f'{key}.npy') as member:
    version = np.lib.format.read_magic(member)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
      raise ValueError(f'unsupported .npy format version {version}')
    return (*read(member), member.tell())


def npz_problem(path: str) -> str | None:
  """What is wrong with an .npz as a dataset, read from its headers and labels (the inputs
  are not loaded), or None: arrays x_train, y_train, x_test, y_test; numeric inputs of one
  example shape in both splits; 1-D non-negative integer labels, one per row; no empty split."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    return (f'not an .npz (a zip of .npy arrays, as np.savez writes): {e}' if os.path.getsize(path)
            else 'the file is empty; expected a .npz written by np.savez')
  with archive:
    names = [n[:-len('.npy')] for n in archive.namelist() if n.endswith('.npy')]
    missing = [k for k in NPZ_KEYS if k not in names]
    if missing:
      return (f"lacks {', '.join(missing)}; it has {', '.join(names) or 'no arrays'} and "
              f"needs {', '.join(NPZ_KEYS)}")
    headers = {}
    for key in NPZ_KEYS:
      try:
        shape, _, dtype, _ = npz_header(archive, key)
      except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        return f'{key} is not a readable .npy array ({user_one_line(e)})'
      if dtype.hasobject:
        return (f'{key} holds Python objects (dtype {dtype}), which would need pickle to load; '
                'save plain numeric arrays')
      if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        return f'{key} has dtype {dtype}; inputs and labels must be numbers'
      headers[key] = shape
  for split in ('train', 'test'):
    x, y = headers[f'x_{split}'], headers[f'y_{split}']
    if len(x) < 2:
      return (f'x_{split} has shape {x}; inputs need a row per example and at least one '
              'feature, shape (examples, features...)')
    if not x[0]:
      return f'the {split} split is empty (x_{split} has shape {x}); it needs examples'
    if len(y) != 1 or y[0] != x[0]:
      return (f'x_{split} has {x[0]} rows and y_{split} has shape {y}; labels must be 1-D, one '
              'per row')
  if headers['x_train'][1:] != headers['x_test'][1:]:
    return (f"x_train's examples have shape {headers['x_train'][1:]} and x_test's "
            f"{headers['x_test'][1:]}; both splits need the same example shape")
  with np.load(path) as npz:
    for key in ('y_train', 'y_test'):
      y = npz[key]
      if not np.issubdtype(y.dtype, np.integer):
        return f'{key} has dtype {y.dtype}; labels must be integers 0..C-1'
      if y.min() < 0:
        return (f'{key} holds negative labels (min {y.min()}, rows '
                f'{np.flatnonzero(y < 0)[:5].tolist()}); labels must be integers 0..C-1')
  return None


def user_one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def npz_num_classes(path: str) -> int:
  """The number of classes of a checked .npz: one more than its largest label."""
  with np.load(path) as npz:
    return int(max(npz['y_train'].max(), npz['y_test'].max())) + 1


def _load_tfds(cfg):
  cache = embedded_arrays_path(cfg)
  if cache and os.path.isfile(cache):
    return _read_arrays_cache(cache)
  arrays = _read_tfds_splits(prepared_builder(cfg), cfg)
  if cache:
    _write_arrays_cache(cache, arrays)
  return arrays


def prepared_builder(cfg, download: bool = True):
  """The TFDS builder of `dataset.name`, prepared: an embedded dataset is generated the first
  time; another is downloaded when `download` (and the machine is online), else a one-line
  error says how to prepare it."""
  builder = _tfds_builder(cfg)
  if builder.is_prepared():
    return builder
  if cfg.name in EMBEDDED:
    _prepare_embedded(builder)
  elif download:
    _download(builder, cfg)
  else:
    raise UserError(f"TFDS dataset '{cfg.name}' is not prepared under {builder.data_dir}; "
                    f'dataset.pipeline=grain reads prepared data: run `tfds build {cfg.name} '
                    '--file_format=array_record` first')
  return _tfds_builder(cfg)  # reads what was just written


def _tfds_builder(cfg):
  import tensorflow_datasets as tfds  # without TensorFlow: metadata and array_record reads
  from recipe_jax.data import tfds_builders  # noqa: F401  registers mnist1d and digits
  return tfds.builder(cfg.name, data_dir=cfg.data_dir)


def _download(builder, cfg) -> None:
  """Downloads and prepares a TFDS dataset; offline, a one-line error saying where to put it."""
  where = os.path.join(builder.data_dir_root, cfg.name)
  how = (f"On a machine with internet run `tfds build {cfg.name} --data_dir=DIR`, copy "
         f"DIR/{cfg.name} to {where} (or set --config.dataset.data_dir=DIR)")
  if not _online():
    raise UserError(f"TFDS dataset '{cfg.name}' is not prepared under {where} and this "
                    f'machine is offline. {how}')
  try:
    builder.download_and_prepare()
  except Exception as e:
    raise UserError(f"TFDS dataset '{cfg.name}' could not be downloaded "
                    f'({type(e).__name__}: {e}). {how}') from None


def embedded_arrays_path(cfg) -> str | None:
  """Where an embedded dataset's arrays are cached after the first TFDS read: the next runs
  load them with numpy, without TensorFlow and tf.data (~5 s of start-up)."""
  if cfg.name not in EMBEDDED or (cfg.image_key, cfg.label_key) != ('image', 'label'):
    return None
  root = cfg.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), 'tensorflow_datasets')
  return os.path.join(root, cfg.name, EMBEDDED[cfg.name], ARRAYS_CACHE)


def _write_arrays_cache(path: str, arrays) -> None:
  x_train, y_train, x_test, y_test, num_classes, ids = arrays
  ids = ids or {}
  tmp = f'{path}.{os.getpid()}.tmp.npz'
  np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
           num_classes=num_classes, **{f'ids_{split}': np.asarray(v) for split, v in ids.items()})
  os.replace(tmp, path)  # several workers may write it at once: each write is whole


def _read_arrays_cache(path: str):
  with np.load(path) as npz:
    ids = {k[len('ids_'):]: npz[k].tolist() for k in npz.files if k.startswith('ids_')}
    return (*(npz[k] for k in NPZ_KEYS), int(npz['num_classes']), ids or None)


def _prepare_embedded(builder) -> None:
  """Generates an embedded dataset locally (no network) the first time, quietly, as
  array_record: the device pipeline and grain both read that format."""
  console.import_tensorflow_quietly()  # TFDS's writer may use it
  import tensorflow_datasets as tfds
  os.makedirs(builder.data_dir_root, exist_ok=True)
  # Several workers (a sweep) may start on a fresh machine together: one prepares, the others
  # wait for it instead of racing to rename the same directory.
  with open(os.path.join(builder.data_dir_root, f'.{builder.name}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if builder.is_prepared():
      return
    logging.info('preparing %s into %s (first use only)', builder.name, builder.data_dir)
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own banner
      # array_record: random access, so both pipelines (device and grain) read it
      builder.download_and_prepare(file_format='array_record')


def _read_tfds_splits(builder, cfg):
  import tensorflow_datasets as tfds
  if str(builder.info.file_format) == str(tfds.core.FileFormat.ARRAY_RECORD):
    from recipe_jax.data import streaming  # tf.data cannot read array_record: random access can
    x_train, *rest = streaming.tfds_sources(builder, cfg)
    return (x_train[:], *rest)
  console.import_tensorflow_quietly()  # tf.data reads tfrecord
  arrays, ids = [], {}
  for role, split in tfds_splits(builder, cfg).items():
    # Batched reads: `batch_size=-1` crashes under tfds.testing.mock_data. In file order (no
    # shuffling), so a row number is the example's index within the TFDS split.
    read_config = tfds.ReadConfig(add_tfds_id=True)
    parts = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False,
                                                  read_config=read_config).batch(4096)))
    arrays += [np.concatenate([p[cfg.image_key] for p in parts]),
               np.concatenate([p[cfg.label_key] for p in parts])]
    if parts and 'tfds_id' in parts[0]:
      ids[role] = [i.decode() for p in parts for i in p['tfds_id']]
  return (*arrays, builder.info.features[cfg.label_key].num_classes, ids or None)


def tfds_splits(builder, cfg) -> dict:
  """{'train': 'train', 'test': dataset.test_split}, each checked to exist, as are the input
  and label features: a one-line error otherwise."""
  for key in (cfg.image_key, cfg.label_key):
    if key not in builder.info.features:
      raise UserError(f"TFDS dataset '{cfg.name}' has no feature '{key}'; it has "
                      f"{', '.join(builder.info.features)} (set dataset.image_key / label_key)")
  splits = {'train': 'train', 'test': cfg.test_split}
  for split in splits.values():
    if builder.info.splits and split not in builder.info.splits:  # empty until prepared
      raise UserError(f"TFDS dataset '{cfg.name}' has no '{split}' split; it has "
                      f"{', '.join(builder.info.splits)} (set dataset.test_split)")
  return splits


def _online(host='storage.googleapis.com', timeout_s=3.0) -> bool:
  """A quick reachability probe, so an offline machine fails now, not after minutes of retries."""
  import socket
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False
