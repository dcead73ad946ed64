"""Several JAX processes (the hosts of a TPU slice, or N processes on one machine) agree on
what only one of them may decide: process 0 decides and broadcasts, the others receive.

A sweep uses it so that only process 0 talks to the study's storage, and the others learn each
trial's parameters (and every pruning decision) from it.
"""
import json

import jax
import numpy as np


def is_leader() -> bool:
  return jax.process_index() == 0


def broadcast_json(value=None):
  """Process 0's `value` (anything JSON can hold) on every process; the others pass nothing.
  Every process must call it at the same point."""
  from jax.experimental import multihost_utils
  data = json.dumps(value).encode() if is_leader() else b''
  size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int32)))
  buffer = np.frombuffer(data, np.uint8) if is_leader() else np.zeros(size, np.uint8)
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())
