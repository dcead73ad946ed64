"""Per-example losses by name, or a user's own as 'package.module:function'.

A loss maps (logits (B, C), integer labels (B,)) to one loss per example, shape (B,);
the train step takes the mean. Every stage uses the configured loss, so a sanity run checks
the loss that training will use.
"""
import optax

from recipe_jax import user_code
from recipe_jax.errors import UserError


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


LOSSES = {'cross_entropy': cross_entropy}


def create(name: str):
  if name in LOSSES:
    return LOSSES[name]
  if ':' not in name:
    raise UserError(f"unknown loss '{name}'; use one of {', '.join(LOSSES)} or "
                    "'package.module:function' taking (logits, labels) -> per-example losses")
  return user_code.load(name, 'loss')
