"""CIFAR-10 ViT (ViT-Tiny's width on 4x4 patches: 64 tokens and a class token), AdamW with a
warmup, crops and flips (needs CIFAR-10 prepared in TFDS: `tfds build cifar10` where online)."""
from recipe_jax.config import defaults


def get_config():
  c = defaults.get_config()
  c.dataset.name = 'cifar10'
  c.dataset.val_fraction = 0.1
  c.model.name = 'vit'
  c.model.width, c.model.depth, c.model.heads, c.model.patch_size = 192, 6, 3, 4
  c.model.dropout = 0.1
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 1000
  c.optimizer.grad_clip_norm = 1.0
  c.augment.crop_padding, c.augment.flip = 4, True
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_train_steps = 30000
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 2000
  return c
