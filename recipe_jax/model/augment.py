"""Data augmentation inside the jitted train step, from explicit keys.

Each example's key is the 'augment' stream folded with the step and the example's position in
the global batch, so a batch is augmented identically on any number of devices and after a
resume. Inputs (B, L) are 1-D signals; (B, H, W, C) are images.
"""
import collections

import jax
import jax.numpy as jnp

from recipe_jax import rng

Settings = collections.namedtuple(
    'Settings', 'shift scale noise crop_padding flip mixup cutmix num_classes')


def settings(cfg, num_classes: int = 0) -> Settings | None:
  """The config's augmentation as a hashable tuple, or None when all of it is off."""
  s = Settings(cfg.shift, cfg.scale, cfg.noise, cfg.crop_padding, cfg.flip, cfg.mixup,
               cfg.cutmix, num_classes)
  return s if any(s[:-1]) else None


def mixes(s: Settings | None) -> bool:
  return s is not None and (s.mixup > 0 or s.cutmix > 0)


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


def mix_draws(s: Settings, seed, step, positions, num_train: int):
  """Per example: the partner (a training example), the weight of the example itself, and
  whether CutMix (else Mixup) mixes them; from the 'mix' stream of (seed, step, position)."""
  def one(position):
    partner_key, method_key, mixup_key, cutmix_key = jax.random.split(
        rng.stream_key(seed, 'mix', step, position), 4)
    partner = jax.random.randint(partner_key, (), 0, num_train)
    lam_mixup = jax.random.beta(mixup_key, max(s.mixup, 1e-3), max(s.mixup, 1e-3))
    lam_cutmix = jax.random.beta(cutmix_key, max(s.cutmix, 1e-3), max(s.cutmix, 1e-3))
    if s.mixup and s.cutmix:
      use_cutmix = jax.random.bernoulli(method_key)
    else:
      use_cutmix = jnp.asarray(s.cutmix > 0)
    return partner, jnp.where(use_cutmix, lam_cutmix, lam_mixup), use_cutmix
  return jax.vmap(one)(positions)


def mix(s: Settings, seed, step, positions, x, y, x_all, y_all):
  """Mixup / CutMix of the (augmented) batch with partners from the training split: returns
  the mixed inputs and soft targets (B, num_classes) that sum to 1. The partner is augmented
  too, with keys of positions past the batch, so nothing depends on the device count."""
  partner, lam, use_cutmix = mix_draws(s, seed, step, positions, len(y_all))
  partner_x = apply(s, seed, step, positions + (1 << 20), x_all[partner])
  own = jax.vmap(lambda key, shape_of, l: _own_fraction(key, shape_of, l))(
      jax.vmap(lambda p: rng.stream_key(seed, 'mix', step, p, 1))(positions), x, lam)
  keep = jnp.where(use_cutmix[:, None], own[1].reshape(len(x), -1), 1.0).reshape(x.shape)
  weight = jnp.where(use_cutmix, own[0], lam)  # the fraction of the example that is its own
  w = weight.reshape(-1, *([1] * (x.ndim - 1)))
  mixed = jnp.where(use_cutmix.reshape(w.shape), keep * x + (1 - keep) * partner_x,
                    w * x + (1 - w) * partner_x)
  targets = (weight[:, None] * jax.nn.one_hot(y, s.num_classes)
             + (1 - weight[:, None]) * jax.nn.one_hot(y_all[partner], s.num_classes))
  return mixed, targets


def _own_fraction(key, x, lam):
  """CutMix: (fraction of x kept, mask of kept positions); a segment of a 1-D signal or a box
  of an image, of about 1 - lam of it, goes to the partner."""
  if x.ndim == 1:
    length = x.shape[0]
    cut = jnp.round((1 - lam) * length).astype(jnp.int32)
    start = jax.random.randint(key, (), 0, length - cut + 1)
    idx = jnp.arange(length)
    keep = ~((idx >= start) & (idx < start + cut))
  else:
    height, width = x.shape[0], x.shape[1]
    side = jnp.sqrt(1 - lam)
    cy_key, cx_key = jax.random.split(key)
    cy = jax.random.randint(cy_key, (), 0, height)
    cx = jax.random.randint(cx_key, (), 0, width)
    half_h, half_w = (side * height / 2).astype(jnp.int32), (side * width / 2).astype(jnp.int32)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = ((rows >= cy - half_h) & (rows < cy + half_h) & (cols >= cx - half_w)
              & (cols < cx + half_w))
    keep = jnp.broadcast_to(~inside[..., None], x.shape)
  keep = keep.astype(x.dtype)
  return keep.mean(), keep
