"""A TFDS builder with an Image feature (PNG-encoded), for reading images through
`tfds.data_source` in tests: 60 train and 20 test 8x8x3 images of 3 classes."""
import numpy as np
import tensorflow_datasets as tfds


class TinyImages(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 3)),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0, 60), 'test': self._generate_examples(1, 20)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {'image': rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 'label': i % 3}


class TinyImagesVarying(tfds.core.GeneratorBasedBuilder):
  """Images of different heights and widths, as ImageNet's are."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0, 6), 'test': self._generate_examples(1, 3)}

  def _generate_examples(self, seed, n):
    for i in range(n):
      yield i, {'image': np.zeros((4 + i, 5 + i, 3), np.uint8), 'label': i % 3}


_LABELLED = {}


def labelled(name: str, label_feature, labels) -> type:
  """A TFDS builder of 8x8x3 images registered as `name` (CamelCase; TFDS's name is its
  snake_case) whose 'label' feature is `label_feature`, its values `labels(i)` for example i:
  the label encodings users bring. Registered once per process."""
  if name in _LABELLED:
    return _LABELLED[name]
  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 3)), 'label': label_feature}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0, 40), 'test': self._generate_examples(40, 12)}

  def _generate_examples(self, start, n):
    for i in range(start, start + n):
      yield i, {'image': np.full((8, 8, 3), i % 256, np.uint8), 'label': labels(i)}
  _LABELLED[name] = type(name, (tfds.core.GeneratorBasedBuilder,), {
      'VERSION': tfds.core.Version('1.0.0'), '_info': _info,
      '_split_generators': _split_generators, '_generate_examples': _generate_examples})
  return _LABELLED[name]
