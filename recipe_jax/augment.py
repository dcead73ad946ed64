"""Data augmentation inside the jitted train step, from explicit keys.

Each example's key is the 'augment' stream folded with the step and the example's position in
the global batch, so a batch is augmented identically on any number of devices and after a
resume. Inputs (B, L) are 1-D signals; (B, H, W, C) are images.
"""
import collections

import jax
import jax.numpy as jnp

from recipe_jax import rng

Settings = collections.namedtuple('Settings', 'shift scale noise crop_padding flip')


def settings(cfg) -> Settings | None:
  """The config's augmentation as a hashable tuple, or None when all of it is off."""
  s = Settings(cfg.shift, cfg.scale, cfg.noise, cfg.crop_padding, cfg.flip)
  return s if any(s) else None


def apply(s: Settings | None, seed, step, positions, x):
  """Augments the batch x, whose examples sit at `positions` in the step's global batch."""
  if s is None:
    return x
  keys = jax.vmap(lambda p: rng.stream_key(seed, 'augment', step, p))(positions)
  return jax.vmap(lambda key, example: _one(s, key, example))(keys, x)


def _one(s: Settings, key, x):
  shift_key, scale_key, noise_key, crop_key, flip_key = jax.random.split(key, 5)
  if x.ndim == 1:  # a 1-D signal: circular shift, amplitude scale, additive noise
    if s.shift:
      x = jnp.roll(x, jax.random.randint(shift_key, (), -s.shift, s.shift + 1))
    if s.scale:
      x = x * jax.random.uniform(scale_key, (), minval=1 - s.scale, maxval=1 + s.scale)
  else:  # an image (H, W, C): random crop after zero padding, horizontal flip
    if s.crop_padding:
      p = s.crop_padding
      padded = jnp.pad(x, ((p, p), (p, p), (0, 0)))
      dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
      x = jax.lax.dynamic_slice(padded, (dy, dx, 0), x.shape)
    if s.flip:
      x = jnp.where(jax.random.bernoulli(flip_key), x[:, ::-1], x)
  if s.noise:
    x = x + s.noise * jax.random.normal(noise_key, x.shape)
  return x
