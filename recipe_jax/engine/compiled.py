"""Compiled programs kept for reuse, a bounded number of them.

Every executable XLA:CPU keeps holds a few memory mappings, and a process may hold at most
`vm.max_map_count` (65530 by default) of them. A process that compiles without bound (a tune
worker over many shapes, a recipe over many stages, a test session) therefore crashes in the
compiler once it has kept some ten thousand programs. So the engine's caches of jitted
functions are bounded (`cached`), and `forget` drops every compiled program at once; the
persistent compilation cache makes compiling one again cheap.
"""
import functools

import jax

PROGRAMS_PER_CACHE = 16  # a stage reuses a handful: its train step, evaluators, init
_caches = []


def cached(function):
  """functools.lru_cache, bounded, and cleared by `forget`."""
  wrapped = functools.lru_cache(maxsize=PROGRAMS_PER_CACHE)(function)
  _caches.append(wrapped)
  return wrapped


def forget() -> None:
  """Drops every compiled program of this process: the engine's caches and JAX's own."""
  for cache in _caches:
    cache.cache_clear()
  jax.clear_caches()
