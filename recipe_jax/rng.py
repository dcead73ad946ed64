"""One root key per run; each use of randomness folds in its own stream id, then the step.

Adding a new random feature therefore never shifts the draws of an existing one.
"""
import jax

STREAMS = {'init': 0, 'data_order': 1, 'dropout': 2, 'augment': 3, 'mix': 4, 'monitor': 5}


def stream_key(seed, stream: str, *folds):
  key = jax.random.fold_in(jax.random.key(seed), STREAMS[stream])
  for f in folds:
    key = jax.random.fold_in(key, f)
  return key
