"""A user's own Flax module, loaded by tests as 'user_models:TinyNet'."""
import flax.linen as nn


def TinyNet(num_classes):  # noqa: N802  a factory, named like the module it builds
  return _Tiny(num_classes=num_classes)


class _Tiny(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):  # no `train` argument: the pipeline must cope
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
