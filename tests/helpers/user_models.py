"""A user's own Flax module, loaded by tests as 'helpers.user_models:TinyNet'."""
import flax.linen as nn


def TinyNet(num_classes):  # noqa: N802  a factory, named like the module it builds
  return _Tiny(num_classes=num_classes)


class _Tiny(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):  # no `train` argument: the pipeline must cope
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def BatchStatsInEval(num_classes):  # noqa: N802
  """BatchNorm that always uses batch statistics: it writes batch_stats in eval mode too, where
  the pipeline applies the model without `mutable` (a classic user mistake)."""
  return _BatchStatsInEval(num_classes=num_classes)


class _BatchStatsInEval(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=False)(h)  # should be `not train`
    return nn.Dense(self.num_classes)(h)


def RaisesInTrain(num_classes):  # noqa: N802
  """Works in eval mode, raises only when trained (a shape bug behind `if train`)."""
  return _RaisesInTrain(num_classes=num_classes)


class _RaisesInTrain(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    if train:
      h = h.reshape(h.shape[0], 7, -1)  # 40 features do not split into 7 rows
    return nn.Dense(self.num_classes)(h)
