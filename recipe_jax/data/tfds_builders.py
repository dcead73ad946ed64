"""TFDS builders for the embedded datasets; both are generated offline, never downloaded.

Importing this module registers `mnist1d` and `digits` with TFDS.
"""
import numpy as np
import tensorflow_datasets as tfds

from recipe_jax.data.embedded import EMBEDDED

DIGITS_TEST_FRACTION = 0.2


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D (Greydanus 2020): 4000 train / 1000 test sequences of length 40, 10 classes."""

  VERSION = tfds.core.Version(EMBEDDED['mnist1d'])

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(40,), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/greydanus/mnist1d',
    )

  def _split_generators(self, dl_manager):
    from mnist1d.data import get_dataset_args, make_dataset
    data = make_dataset(get_dataset_args())  # seeded generator, no network
    return {
        'train': self._generate_examples(data['x'], data['y']),
        'test': self._generate_examples(data['x_test'], data['y_test']),
    }

  def _generate_examples(self, x, y):
    for i, (example, label) in enumerate(zip(x, y)):
      yield i, {'image': example.astype(np.float32), 'label': int(label)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1797 8x8 digit images (values 0..16), split 80/20 by a fixed stratified shuffle."""

  VERSION = tfds.core.Version(EMBEDDED['digits'])

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        indices, test_size=DIGITS_TEST_FRACTION, random_state=0, stratify=digits.target)
    images = digits.images.astype(np.float32)[..., None]
    return {
        'train': self._generate_examples(images, digits.target, np.sort(train_idx)),
        'test': self._generate_examples(images, digits.target, np.sort(test_idx)),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
