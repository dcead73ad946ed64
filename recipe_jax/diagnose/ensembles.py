"""Ensembles, test-time augmentation and distillation (recipe step 6), on probabilities."""
import dataclasses
import functools

import jax
import numpy as np
import optax

from recipe_jax.diagnose import analysis
from recipe_jax.engine import evaluate
from recipe_jax.model import augment


def scores(probs: np.ndarray, labels: np.ndarray, calibration_bins: int = 15) -> dict:
  """accuracy, loss (mean negative log-likelihood) and ECE of probabilities."""
  picked = probs[np.arange(len(labels)), labels]
  return {'accuracy': float((probs.argmax(-1) == labels).mean()),
          'loss': float(-np.log(np.clip(picked, 1e-12, 1)).mean()),
          'ece': analysis.calibration(probs, labels, calibration_bins)[0]}


def average(member_probs: list) -> np.ndarray:
  """The ensemble's prediction: the mean of its members' predicted probabilities."""
  return np.mean(np.stack(member_probs), 0)


@functools.partial(jax.jit, static_argnums=0)
def _augmented(settings, seed, copy, x):
  return augment.apply(settings, seed, copy, jax.numpy.arange(len(x)), x)


def tta_probs(exp, state, x: np.ndarray, copies: int) -> np.ndarray:
  """Probabilities averaged over x and `copies` draws of the configured augmentation."""
  total = evaluate.probabilities(exp, state, x)
  for copy in range(copies):
    augmented = np.asarray(_augmented(exp.augmentation, exp.config.seed, copy, x))
    total = total + evaluate.probabilities(exp, state, augmented)
  return total / (copies + 1)


def soft_targets(teacher_probs: np.ndarray, temperature: float) -> np.ndarray:
  """The teacher's probabilities softened: softmax(log p / T)."""
  return evaluate.softmax(np.log(np.clip(teacher_probs, 1e-12, 1)) / temperature
                          ).astype(np.float32)


@functools.lru_cache(maxsize=None)  # one function per temperature: compiled steps are reused
def distillation_loss(temperature: float):
  """T^2 x cross-entropy between the softened targets and the softened student (Hinton et al.;
  the T^2 keeps the gradient scale independent of T)."""
  def loss(logits, targets):
    return temperature ** 2 * optax.softmax_cross_entropy(logits / temperature, targets)
  return loss


def student_experiment(exp, teacher_probs: np.ndarray, temperature: float):
  """`exp` training on the teacher's softened probabilities of its training split instead of
  the labels (evaluation still against the labels)."""
  dataset = dataclasses.replace(exp.dataset, y_train=soft_targets(teacher_probs, temperature))
  return dataclasses.replace(exp, dataset=dataset, train_loss_fn=distillation_loss(temperature))
