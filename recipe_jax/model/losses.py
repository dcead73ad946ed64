"""Per-example losses by name, or a user's own as 'package.module:function'.

A loss maps (logits (B, C), integer labels (B,)) to one loss per example, shape (B,);
the train step takes the mean. Every stage uses the configured loss, so a sanity run checks
the loss that training will use.
"""
import functools

import jax
import optax

from recipe_jax.model import user_code
from recipe_jax.errors import UserError


def cross_entropy(logits, labels):
  """Integer labels (B,), or soft targets (B, C) that sum to 1 (mixup, cutmix)."""
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


LOSSES = {'cross_entropy': cross_entropy}


@functools.lru_cache(maxsize=None)  # one function per value, so compiled steps are reused
def smoothed_cross_entropy(label_smoothing: float):
  """Cross-entropy against one-hot labels mixed with the uniform distribution."""
  def loss(logits, labels):
    targets = labels if labels.ndim == logits.ndim else jax.nn.one_hot(labels, logits.shape[-1])
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))
  return loss


def create(name: str, label_smoothing: float = 0.0):
  if label_smoothing:  # the config check allows it with cross_entropy only
    return smoothed_cross_entropy(label_smoothing)
  if name in LOSSES:
    return LOSSES[name]
  if ':' not in name:
    raise UserError(f"unknown loss '{name}'; use one of {', '.join(LOSSES)} or "
                    "'package.module:function' taking (logits, labels) -> per-example losses")
  return user_code.load(name, 'loss')

