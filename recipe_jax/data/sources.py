"""Where datasets come from: `.npz` files (checked, one line per problem) and TFDS datasets
(prepared, read as arrays, or read row by row), with the identity a run directory records.
`arrays` reads a source into memory; `lazy_arrays` leaves the training inputs in storage."""
import contextlib
import fcntl
import functools
import hashlib
import io
import os
import zipfile

import numpy as np
from absl import logging

from recipe_jax import console
from recipe_jax.data.embedded import ARRAYS_CACHE, EMBEDDED
from recipe_jax.errors import UserError

NPZ_PREFIX = 'npz:'
NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
# More classes than this, most of them never seen, means the labels are ids, not indices.
MAX_SPARSE_CLASSES = 1000


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


def arrays(cfg):
  """(x_train, y_train, x_test, y_test, num_classes, tfds_ids) in memory."""
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
    if len(y) == 2 and y[0] == x[0] and y[1] == 1:
      return (f'y_{split} has shape {y}, a column; labels must be 1-D, one per row: save '
              f'y_{split}.ravel()')
    if len(y) == 2 and y[0] == x[0]:
      return (f'y_{split} has shape {y}: one-hot or per-class scores? labels must be 1-D class '
              f'ids, one per row: save y_{split}.argmax(axis=1)')
    if len(y) != 1 or y[0] != x[0]:
      return (f'x_{split} has {x[0]} rows and y_{split} has shape {y}; labels must be 1-D, one '
              'per row')
  if headers['x_train'][1:] != headers['x_test'][1:]:
    return (f"x_train's examples have shape {headers['x_train'][1:]} and x_test's "
            f"{headers['x_test'][1:]}; both splits need the same example shape")
  with np.load(path) as npz:
    return labels_problem({key: npz[key] for key in ('y_train', 'y_test')})


def labels_problem(labels: dict) -> str | None:
  """What is wrong with 1-D label arrays as class ids, or None. `labels`: {name: array}, the
  training split's first: integers, none negative, at least 2 classes in training, and ids
  that are class indices 0..C-1 (not ids like {0, 3, 7, 10**9}, which would build a layer of
  10**9 outputs)."""
  for key, y in labels.items():
    if not len(y):
      return f'{key} is empty: the split needs examples'
    if not np.issubdtype(y.dtype, np.integer):
      return f'{key} has dtype {y.dtype}; labels must be integers 0..C-1'
    if y.min() < 0:
      return (f'{key} holds negative labels (min {y.min()}, rows '
              f'{np.flatnonzero(y < 0)[:5].tolist()}); labels must be integers 0..C-1')
  train_labels = np.unique(next(iter(labels.values())))
  if len(train_labels) < 2:
    return (f'{next(iter(labels))} holds one class (label {train_labels[0]}) in every row: there '
            'is nothing to classify; a classifier needs examples of at least 2 classes')
  labels = np.unique(np.concatenate([np.unique(y) for y in labels.values()]))
  classes = int(labels[-1]) + 1
  if classes > max(2 * len(labels), MAX_SPARSE_CLASSES):
    shown = ', '.join(map(str, labels[:4])) + (', ...' if len(labels) > 5 else '') + (
        f', {labels[-1]}' if len(labels) > 4 else '')
    return (f'the labels run up to {labels[-1]} but only {len(labels)} distinct values occur '
            f'({shown}): ids, not class indices 0..C-1 ({classes} output units would be '
            'built); remap them with np.unique(y, return_inverse=True)')
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
  # Without TensorFlow, TFDS writes array_record (its tfrecord writer needs TensorFlow).
  formats = {} if console.import_tensorflow_quietly() else {'file_format': 'array_record'}
  try:
    builder.download_and_prepare(**formats)
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
  console.import_tensorflow_quietly()  # TFDS's writer uses it where it is installed
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
    x_train, *rest = tfds_sources(builder, cfg)  # tf.data cannot read array_record
    return (x_train[:], *rest)
  if not console.import_tensorflow_quietly():  # tf.data reads tfrecord
    raise UserError(f"TFDS dataset '{cfg.name}' is prepared as tfrecord, which needs "
                    'TensorFlow: pip install -e ".[tfrecord]", or prepare it as array_record '
                    f'(tfds build {cfg.name} --file_format=array_record) into a new data_dir')
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
  return (*arrays, tfds_num_classes(builder, cfg, arrays[1], arrays[3]), ids or None)


def tfds_splits(builder, cfg) -> dict:
  """{'train': 'train', 'test': dataset.test_split}, each checked to exist, as are the input
  and label features: a one-line error otherwise."""
  for key in (cfg.image_key, cfg.label_key):
    if key not in builder.info.features:
      raise UserError(f"TFDS dataset '{cfg.name}' has no feature '{key}'; it has "
                      f"{', '.join(builder.info.features)} (set dataset.image_key / label_key)")
  label = builder.info.features[cfg.label_key]
  shape = tuple(getattr(label, 'shape', ()))
  if shape:
    kind = ('a column: one label per example, in an array of 1' if shape == (1,) else
            'one-hot or per-class scores?')
    raise UserError(f"TFDS dataset '{cfg.name}': feature '{cfg.label_key}' has shape {shape} per "
                    f'example ({kind}); labels must be one class id per example: a '
                    'tfds.features.ClassLabel, or an integer scalar (set dataset.label_key)')
  splits = {'train': 'train', 'test': cfg.test_split}
  for split in splits.values():
    if builder.info.splits and split not in builder.info.splits:  # empty until prepared
      raise UserError(f"TFDS dataset '{cfg.name}' has no '{split}' split; it has "
                      f"{', '.join(builder.info.splits)} (set dataset.test_split)")
  return splits


def tfds_num_classes(builder, cfg, y_train, y_test) -> int:
  """A ClassLabel's number of classes; for a plain integer feature, one more than the largest
  label, once the labels pass `labels_problem` (a one-line UserError otherwise)."""
  label = builder.info.features[cfg.label_key]
  if isinstance(getattr(label, 'num_classes', None), int):
    return label.num_classes
  labels = {f"the train split's '{cfg.label_key}'": np.asarray(y_train),
            f"the {cfg.test_split} split's '{cfg.label_key}'": np.asarray(y_test)}
  problem = labels_problem(labels)
  if problem:
    raise UserError(f"TFDS dataset '{cfg.name}': {problem}")
  return int(max(y.max() for y in labels.values())) + 1  # none is empty: labels_problem


def _online(host='storage.googleapis.com', timeout_s=3.0) -> bool:
  """A quick reachability probe, so an offline machine fails now, not after minutes of retries."""
  import socket
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def train_split_bytes(cfg) -> int:
  """The source training split's size as float32, read from headers, not from the data."""
  if cfg.name.startswith(NPZ_PREFIX):
    shape = npz_member(cfg.name[len(NPZ_PREFIX):], 'x_train').shape
  else:
    builder = prepared_builder(cfg, download=False)
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
  check_npz(path)
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(f'{key}.npy')
    if info.compress_type == zipfile.ZIP_STORED:
      shape, fortran, dtype, header_size = npz_header(archive, key)
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


def lazy_arrays(cfg):
  """As `arrays`, with the training inputs left in storage: a memory-mapped .npz member or
  random-access TFDS rows (array_record)."""
  if cfg.name.startswith(NPZ_PREFIX):
    path = cfg.name[len(NPZ_PREFIX):]
    num_classes = check_npz(os.path.expanduser(path))
    x_train, x_test = npz_member(path, 'x_train'), npz_member(path, 'x_test')
    y_train, y_test = (np.asarray(npz_member(path, k)) for k in ('y_train', 'y_test'))
    return x_train, y_train, x_test, y_test, num_classes, None
  return tfds_sources(prepared_builder(cfg, download=False), cfg)


def tfds_sources(builder, cfg):
  """The TFDS dataset's training inputs as random-access `TfdsRows`, the test inputs and all
  labels in memory; the image feature is not decoded to read the labels."""
  import tensorflow_datasets as tfds
  arrays = []
  for split in tfds_splits(builder, cfg).values():
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
    # scalar labels come back as Python numbers: the feature's dtype, not float64 or int64
    y = np.array([e[cfg.label_key] for e in labels.__getitems__(list(range(len(labels))))],
                 getattr(builder.info.features[cfg.label_key], 'np_dtype', None))
    arrays += [TfdsRows(source, cfg.image_key, example_shape(builder, cfg)), y]
  x_train, y_train, x_test, y_test = arrays
  return (x_train, y_train, x_test[:], y_test, tfds_num_classes(builder, cfg, y_train, y_test),
          None)
