"""CIFAR-10 ResNet-18 (needs CIFAR-10 prepared in TFDS: `tfds build cifar10` where online)."""
from recipe_jax.config import defaults


def get_config():
  c = defaults.get_config()
  c.dataset.name = 'cifar10'
  c.dataset.val_fraction = 0.1
  c.model.name = 'resnet18'
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 500
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_train_steps = 30000
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 2000
  return c
