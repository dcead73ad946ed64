"""Scalars to TensorBoard event files and the log, without TensorFlow.

clu's default writer wrote through `tf.summary`, and importing TensorFlow cost ~4 s of every
run's start. The event file format is small: TFRecord-framed `Event` protos. This writes the
same events `tf.summary.scalar` writes (a float32 scalar tensor with the 'scalars' plugin's
metadata), with the protos and record framing of the `tensorboard` package.
"""
import os
import socket
import tempfile
import time

import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from recipe_jax import console, files


class ScalarWriter:
  """`write_scalars(step, {name: value})` to DIR/events.out.tfevents.* (process 0 only) and
  the log; `flush()`, `close()`."""

  def __init__(self, logdir: str, *, just_logging: bool = False):
    """A remote logdir gets a local file, sent up whole at every `flush` (a checkpoint) and
    at `close`."""
    self._records, self._remote = None, None
    self._tags_seen = set()
    if not just_logging:
      name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0.v2'
      local_dir = logdir
      if files.is_remote(logdir):
        self._remote, local_dir = files.join(logdir, name), tempfile.mkdtemp(prefix='recipe_jax_tb_')
      os.makedirs(local_dir, exist_ok=True)
      self._local = os.path.join(local_dir, name)
      self._records = RecordWriter(open(self._local, 'wb'))
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def write_scalars(self, step: int, scalars: dict) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in scalars.items()),
                 extra=console.FILE_ONLY)
    if self._records is None:
      return
    values = [self._value(tag, float(v)) for tag, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values)))

  def _value(self, tag: str, value: float):
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                    tensor_content=np.float32(value).tobytes())
    summary_value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if tag not in self._tags_seen:  # like tf.summary: the plugin metadata with the first value
      self._tags_seen.add(tag)
      summary_value.metadata.plugin_data.plugin_name = 'scalars'
    return summary_value

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def flush(self) -> None:
    if self._records is not None and not self._records.closed:
      self._records.flush()
      self._send_up()

  def close(self) -> None:
    if self._records is not None and not self._records.closed:
      self._records.close()
      self._send_up()

  def _send_up(self) -> None:
    if self._remote:
      files.copy_local_to(self._local, self._remote)
