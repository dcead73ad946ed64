"""Recipe step 2 checks: each planted training bug must make its check FAIL; a correct model passes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recipe_jax.diagnose import checks
from recipe_jax.model import losses, models
from recipe_jax.engine import state as state_lib


class SubtractsBatchMean(nn.Module):  # a classic silent bug: normalising over the batch axis
  @nn.compact
  def __call__(self, x, train=False):
    return models.MLP(num_classes=5)(x - x.mean(axis=0, keepdims=True))


class TransposesBatchIntoFeatures(nn.Module):  # reshape instead of transpose, across the batch
  @nn.compact
  def __call__(self, x, train=False):
    return models.MLP(num_classes=5)(x.T.reshape(x.shape))


class DeadFirstLayer(nn.Module):  # a layer whose output is multiplied by zero
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(16)(x)) * 0.0
    return nn.Dense(5)(h + 1.0)


class NaNLayer(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(5)(jnp.sqrt(nn.Dense(8)(x) - 1e6))


def setup(model, example_shape=(12,), batch=6):
  x = jax.random.normal(jax.random.key(0), (batch, *example_shape))
  y = jnp.arange(batch) % 5
  variables = model.init(jax.random.key(1), x[:1], train=False)

  def apply_fn(v, inputs, train):
    out = model.apply(v, inputs, train=train, mutable=['batch_stats'] if train else False)
    return out[0] if train else out

  return apply_fn, variables, x, y


def loss_fn(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def dependency(model, **kwargs):
  apply_fn, variables, x, y = setup(model, **kwargs)
  return checks.batch_dependency(apply_fn, variables, x, y, loss_fn,
                                 uses_batch_statistics='batch_stats' in variables)


def grad_check(model):
  apply_fn, variables, x, y = setup(model)
  grad_fn = jax.grad(lambda v, xb, yb: loss_fn(apply_fn(v, xb, False), yb).mean())
  return checks.gradients(grad_fn, variables, x, y)


def test_correct_model_passes_both_checks():
  assert dependency(models.MLP(num_classes=5)).status == 'PASS'
  assert grad_check(models.MLP(num_classes=5)).status == 'PASS'


def test_batch_mean_subtraction_is_caught():
  v = dependency(SubtractsBatchMean())
  assert v.status == 'FAIL' and 'eval mode' in v.summary and 'mixes examples' in v.summary


def test_transposing_batch_into_features_is_caught():
  assert dependency(TransposesBatchIntoFeatures(), example_shape=(6,)).status == 'FAIL'


class WithBatchNorm(nn.Module):  # correct: batch statistics in train mode, running in eval
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(5)(nn.relu(h))


def test_batchnorm_mixing_in_train_mode_is_explained_not_failed():
  v = dependency(WithBatchNorm(), example_shape=(8, 8, 3))
  assert v.status == 'PASS' and 'batch statistics' in v.summary
  assert v.evidence['train']['mixed_pairs_loss_input'] and not v.evidence['eval'][
      'mixed_pairs_loss_input']


class DeadInEvalModeAtInit(nn.Module):
  """Correct: BatchNorm whose running averages (mean 0, variance 1 at init) send some examples
  to all-zero features in eval mode, while batch statistics in train mode do not."""
  eval_path_ignores_input: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    signs = lambda key, shape, dtype=jnp.float32: jnp.array([[1.0, -1.0]], dtype)
    shift = lambda key, shape, dtype=jnp.float32: jnp.full(shape, -20.0, dtype)
    h = nn.Dense(2, kernel_init=signs, bias_init=shift)(x)  # (x - 20, -x - 20)
    h = nn.BatchNorm(use_running_average=not train)(h)
    if self.eval_path_ignores_input and not train:
      h = h * 0.0  # a planted bug: the eval path detaches the input
    return nn.Dense(5)(nn.relu(h))


class Overconfident(nn.Module):
  """Logits so large that some examples' loss is exactly 0 in float32 (no gradient left)."""
  @nn.compact
  def __call__(self, x, train=False):
    return 1e4 * nn.Dense(5)(x)


def test_losses_already_at_zero_are_flat_not_cut_off_but_negative_or_all_zero_ones_count():
  apply_fn, variables, x, y = setup(Overconfident())
  predicted = apply_fn(variables, x, False).argmax(-1)
  y = jnp.where(jnp.arange(len(y)) < 3, predicted, (predicted + 1) % 5)  # 3 right, 3 wrong
  flat = lambda logits, labels: jnp.zeros(len(labels))  # a loss that ignores the model
  negated = lambda logits, labels: -loss_fn(logits, labels)
  v = checks.batch_dependency(apply_fn, variables, x, y, loss_fn)
  zero = v.evidence['losses_at_zero']['eval']
  assert zero == [0, 1, 2] and v.status == 'PASS' and 'already 0' in v.summary, v.summary
  v = checks.batch_dependency(apply_fn, variables, x, y, flat)
  assert v.status == 'FAIL' and 'do not depend on their own input' in v.summary
  assert v.evidence['losses_at_zero'] == {'eval': [], 'train': []}
  v = checks.batch_dependency(apply_fn, variables, x, y, negated)
  assert v.evidence['losses_at_zero']['eval'] == zero  # -0 is 0 too; the large ones count


def test_eval_mode_dead_examples_at_init_pass_with_batchnorm_unless_all_are_dead():
  apply_fn, variables, x, y = setup(DeadInEvalModeAtInit(), example_shape=(1,), batch=8)
  x = jnp.linspace(10.0, 30.0, 8)[:, None]  # x < 20: all-zero features in eval mode at init
  v = checks.batch_dependency(apply_fn, variables, x, y, loss_fn, True)
  dead = v.evidence['eval']['examples_not_depending_on_own_input']
  assert 0 < len(dead) < len(y) and not v.evidence['train']['examples_not_depending_on_own_input']
  assert v.status == 'PASS' and 'running averages' in v.summary
  apply_fn, variables, _, _ = setup(DeadInEvalModeAtInit(eval_path_ignores_input=True),
                                    example_shape=(1,), batch=8)
  v = checks.batch_dependency(apply_fn, variables, x, y, loss_fn, True)
  assert v.status == 'FAIL' and 'eval mode: losses' in v.summary


def test_dead_layer_is_named_by_the_gradient_check():
  v = grad_check(DeadFirstLayer())
  assert v.status == 'FAIL' and 'Dense_0' in v.summary
  assert dependency(DeadFirstLayer()).status == 'FAIL'  # losses ignore their inputs


def test_nan_gradients_fail():
  v = grad_check(NaNLayer())
  assert v.status == 'FAIL' and 'NaN/Inf' in v.summary


def test_two_examples_are_refused():
  apply_fn, variables, x, y = setup(models.MLP(num_classes=5), batch=2)
  with pytest.raises(ValueError, match='at least 4'):
    checks.batch_dependency(apply_fn, variables, x, y, loss_fn)


def test_fixed_seed_catches_unseeded_randomness_and_an_ignored_seed():
  params = lambda seed: {'w': np.full(3, seed, np.float32)}
  assert checks.fixed_seed(params, 0).status == 'PASS'
  unseeded = lambda seed: {'w': np.random.default_rng().normal(size=3).astype(np.float32)}
  v = checks.fixed_seed(unseeded, 0)
  assert v.status == 'FAIL' and 'different parameters' in v.summary
  v = checks.fixed_seed(lambda seed: params(0), 0)
  assert v.status == 'FAIL' and 'identical' in v.summary


def batches_around(mean, std, n=20):
  """n batch losses whose mean and sample std are exactly `mean` and `std`."""
  unit = np.resize([-1.0, 1.0], n)
  return mean + std * unit / unit.std(ddof=1)


def test_loss_at_init_is_two_sided_with_a_tolerance_from_the_batch_spread():
  rng = np.random.default_rng(0)
  expected = np.log(10)
  near = expected + 0.01 * rng.standard_normal(20)
  assert checks.loss_at_init(near, expected).status == 'PASS'
  v = checks.loss_at_init(near + 0.2, expected)  # 20 batch std too high, but 1.09x expected
  assert v.status == 'WARN' and 'initial logits are not small' in v.summary
  assert 'zero-initialised last layer' in v.summary
  v = checks.loss_at_init(near - 0.2, expected)
  assert v.status == 'FAIL' and 'too low' in v.summary and 'leak' in v.summary
  # The same 0.2 offset is fine when batches spread that much: the tolerance is not a factor.
  assert checks.loss_at_init(expected + 0.2 + 0.1 * rng.standard_normal(20),
                             expected).status == 'PASS'
  v = checks.loss_at_init(near * 30, expected)  # a final layer far too large
  assert v.status == 'FAIL' and 'overconfident' in v.summary


def test_loss_at_init_near_its_thresholds():
  expected, std = np.log(4), 0.02
  status = lambda mean, **kw: checks.loss_at_init(batches_around(mean, std), expected, **kw).status
  assert status(expected + 4.9 * std) == 'PASS'  # inside 5 batch std
  assert status(expected + 5.1 * std) == 'WARN'  # just beyond, too high: under 2x
  assert status(expected - 4.9 * std) == 'PASS'
  assert status(expected - 5.1 * std) == 'FAIL'  # just beyond, too low
  assert status(1.98 * expected) == 'WARN'  # overconfident but under the FAIL ratio
  assert status(2.02 * expected) == 'FAIL'
  assert status(1.48 * expected, max_ratio=1.5) == 'WARN'
  assert status(1.52 * expected, max_ratio=1.5) == 'FAIL'
  assert status(expected + 4.9 * std, max_z=5.0) == 'PASS'
  assert status(expected + 3.1 * std, max_z=3.0) == 'WARN'


def test_expected_initial_loss_is_the_prior_entropy_or_log_c():
  prior = np.array([0.5, 0.25, 0.25])
  assert checks.expected_initial_loss(prior, True) == pytest.approx(1.0397, abs=1e-4)
  assert checks.expected_initial_loss(prior, False) == pytest.approx(np.log(3))


def init_well_verdict(model, log_prior, set_bias=True):
  state = state_lib.init_state(model, optax.adam(1e-3), (12,), 0, log_prior if set_bias else None)
  x = jnp.ones((4, 12))
  return checks.init_well(lambda p: model.apply({'params': p}, x), state.params, log_prior,
                          enabled=set_bias)


def test_init_well_sets_the_output_bias_and_verifies_it():
  log_prior = np.log(np.array([0.7, 0.1, 0.1, 0.05, 0.05], np.float32))
  v = init_well_verdict(models.MLP(num_classes=5, width=5), log_prior)  # hidden bias (5,) too
  assert v.status == 'PASS' and v.evidence['output_bias'] == 'Dense_2/bias'
  np.testing.assert_allclose(v.evidence['bias'], log_prior)
  assert 'log class priors (-3..-0.357, the logs of priors 0.05..0.7)' in v.summary  # words match
  assert init_well_verdict(models.MLP(num_classes=5), log_prior, set_bias=False).status == 'WARN'


class SoftmaxHead(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jax.nn.softmax(nn.Dense(5)(x))


def test_init_well_fails_when_the_bias_cannot_reach_the_logits():
  v = init_well_verdict(SoftmaxHead(), np.log(np.full(5, 0.2, np.float32)))
  assert v.status == 'FAIL' and 'softmax' in v.summary


def test_dumb_baselines_need_a_margin_over_the_zero_input_model():
  labels = np.array([0, 0, 1, 2])
  prior = np.array([0.5, 0.25, 0.25])
  zero = {'accuracy': 0.5, 'loss': 1.04}
  v = checks.dumb_baselines(labels, prior, zero, {'accuracy': 0.53, 'loss': 1.0}, 0.05, 0.9)
  assert v.status == 'FAIL' and 'human 0.900' in v.summary
  assert v.evidence['validation']['majority class']['accuracy'] == 0.5
  assert v.evidence['validation']['class prior']['loss'] == pytest.approx(1.0397, abs=1e-4)
  assert checks.dumb_baselines(labels, prior, zero, {'accuracy': 0.75, 'loss': 0.7},
                               0.05).status == 'PASS'


def test_overfit_one_batch_needs_low_loss_and_full_accuracy():
  losses = np.geomspace(2.3, 1e-3, 100)
  assert checks.overfit_one_batch(losses, np.ones(100), 0.05).status == 'PASS'
  assert checks.overfit_one_batch(losses, np.full(100, 0.875), 0.05).status == 'FAIL'
  v = checks.overfit_one_batch(np.full(100, 1.46), np.ones(100), 0.05)  # softmax-then-CE floor
  assert v.status == 'FAIL' and v.evidence['first_step_fitted'] is None


def test_overfit_one_batch_still_falling_asks_for_steps_and_eval_mode_counts():
  """A loss still falling when the steps run out is a WARN for more steps; the deterministic
  (eval-mode) loss of a batch memorised under dropout passes; a floor from the loss itself
  moves the target."""
  falling = np.geomspace(2.3, 0.2, 100)
  v = checks.overfit_one_batch(falling, np.ones(100), 0.05)
  assert v.status == 'WARN' and 'still falling' in v.summary and 'more steps' in v.summary
  stalled = np.concatenate([np.geomspace(2.3, 0.2, 50), np.full(50, 0.2)])
  assert checks.overfit_one_batch(stalled, np.ones(100), 0.05).status == 'FAIL'
  v = checks.overfit_one_batch(stalled * 0.37, np.ones(100), 0.05, eval_loss=0.01,
                               eval_accuracy=1.0)
  assert v.status == 'PASS' and 'in eval mode (deterministic)' in v.summary
  assert checks.overfit_one_batch(stalled * 0.37, np.ones(100), 0.05, eval_loss=0.06,
                                  eval_accuracy=1.0).status == 'FAIL'  # just over the target
  v = checks.overfit_one_batch(np.full(100, 0.52), np.ones(100), 0.05, floor=0.5)
  assert v.status == 'PASS' and 'its floor 0.5' in v.summary
  assert checks.overfit_one_batch(np.full(100, 0.56), np.ones(100), 0.05,
                                  floor=0.5).status == 'FAIL'


def test_still_falling_near_its_threshold():
  def curve(fall):  # flat, then the last fifth falls by `fall`
    return np.concatenate([np.ones(80), np.linspace(1, 1 - fall, 20)])
  assert checks.still_falling(curve(0.3)) >= checks.STILL_FALLING
  assert checks.still_falling(curve(0.15)) < checks.STILL_FALLING


C = 10
SIGNATURE_LABELS = np.random.default_rng(0).permutation(np.arange(64) % C)


def signature_of(loss_fn):
  rng = np.random.default_rng(1)
  logits = {'uniform': np.zeros((64, C)), 'init': rng.normal(size=(64, C)),
            'after': 3 * np.eye(C)[SIGNATURE_LABELS] + rng.normal(size=(64, C))}
  return checks.loss_signature(loss_fn, SIGNATURE_LABELS, C, logits)


def smoothed(epsilon):
  return lambda z, y: optax.softmax_cross_entropy(
      z, optax.smooth_labels(jax.nn.one_hot(y, z.shape[-1]), epsilon))


def test_loss_signature_tells_the_kinds_of_loss_apart():
  """The user's loss against cross-entropy on the same logits: scaled, soft targets, shifted
  targets, targets of other examples, a flipped sign; the reference and another proper loss
  pass."""
  v = signature_of(losses.cross_entropy)
  assert v.status == 'PASS' and v.cause is None
  v = signature_of(lambda z, y: -(jax.nn.log_softmax(z) * jax.nn.one_hot(y, C)).mean(-1))
  assert v.status == 'WARN' and v.cause == 'loss_scaled'
  assert '0.1x the cross-entropy' in v.summary and 'a mean over the 10 classes' in v.summary
  v = signature_of(smoothed(0.1))
  assert v.status == 'WARN' and v.cause == 'loss_floor' and 'soft targets' in v.summary
  assert v.evidence['floor'] == pytest.approx(0.5, abs=0.02)
  v = signature_of(lambda z, y: losses.cross_entropy(z, (y - 1) % C))
  assert v.status == 'FAIL' and v.cause == 'targets_differ'
  assert 'class (label -1)' in v.summary
  v = signature_of(lambda z, y: losses.cross_entropy(z, jnp.roll(y, 1)))
  assert v.status == 'FAIL' and v.cause == 'targets_from_other_examples'
  assert 'other examples' in v.summary
  v = signature_of(lambda z, y: -losses.cross_entropy(z, y))
  assert v.status == 'FAIL' and v.cause == 'loss_maximised' and 'sign' in v.summary
  def focal(z, y):
    p = jnp.take_along_axis(jax.nn.softmax(z), y[:, None], -1)[:, 0]
    return -(1 - p) ** 2 * jnp.log(p)
  v = signature_of(focal)
  assert v.status == 'PASS' and v.cause == 'loss_not_cross_entropy'


@pytest.mark.parametrize('scale, cause', [(1.08, None), (1.15, 'loss_scaled'), (0.85, 'loss_scaled')])
def test_loss_signature_scale_near_its_threshold(scale, cause):
  assert signature_of(lambda z, y: scale * losses.cross_entropy(z, y)).cause == cause


@pytest.mark.parametrize('epsilon, cause', [(0.005, None), (0.03, 'loss_floor')])
def test_loss_signature_floor_near_its_threshold(epsilon, cause):
  """Label smoothing 0.005 leaves a floor of about 0.04 (under 0.05 ln 10 = 0.115); 0.03, about
  0.17."""
  v = signature_of(smoothed(epsilon))
  assert v.cause in ((cause,) if cause else (None, 'loss_not_cross_entropy')), v.summary


@pytest.mark.parametrize('shifted, status', [(0.0, 'PASS'), (0.1, 'FAIL'), (0.3, 'FAIL')])
def test_loss_signature_targets_differ_for_a_tenth_of_the_examples(shifted, status):
  """A loss that moves some classes' labels to the next class: a proper loss is lowest at
  every label, so one class of ten moved (10% of the examples, past the 5% allowed) FAILs."""
  moved = np.arange(C) < shifted * C  # these classes are trained toward the next one
  def partly_shifted(z, y):
    return losses.cross_entropy(z, jnp.where(jnp.asarray(moved)[y], (y + 1) % C, y))
  v = signature_of(partly_shifted)
  assert v.status == status, v.summary
  if status == 'FAIL':
    assert 'class (label +1)' in v.summary and 'labels 0' in v.summary


def test_decreasing_loss_fails_on_a_flat_or_rising_curve():
  rng = np.random.default_rng(0)
  steps = np.arange(300)
  assert checks.decreasing_loss(2.3 * np.exp(-steps / 100)).status == 'PASS'
  assert checks.decreasing_loss(2.3 + 0.05 * rng.standard_normal(300)).status == 'FAIL'
  assert checks.decreasing_loss(2.3 + steps / 100).status == 'FAIL'
  assert checks.decreasing_loss(np.array([2.3, np.nan, 1.0])).status == 'FAIL'


def test_inputs_before_net_grades_the_scale():
  rng = np.random.default_rng(0)
  standard = rng.standard_normal((16, 8, 8))
  assert checks.inputs_before_net(standard).status == 'PASS'
  assert checks.inputs_before_net(rng.uniform(0, 1, (16, 8, 8))).status == 'WARN'  # [0, 1]
  assert checks.inputs_before_net(rng.integers(0, 256, (16, 8, 8))).status == 'FAIL'  # raw pixels
  assert checks.inputs_before_net(np.ones((16, 8, 8))).status == 'FAIL'  # all equal
  with_nan = standard.copy()
  with_nan[3, 2, 1] = np.nan
  assert checks.inputs_before_net(with_nan).status == 'FAIL'


def test_prediction_dynamics_warns_when_stuck_or_collapsed():
  labels = np.array([0, 1, 2])
  learning = np.stack([np.full((3, 3), 1 / 3), np.eye(3) * 0.8 + 0.2 / 3])
  assert checks.prediction_dynamics(learning, labels).status == 'PASS'
  stuck = np.stack([np.full((3, 3), 1 / 3)] * 4)
  assert 'never moved' in checks.prediction_dynamics(stuck, labels).summary
  collapsed = np.stack([np.full((3, 3), 1 / 3), np.tile([0.9, 0.05, 0.05], (3, 1))])
  v = checks.prediction_dynamics(collapsed, labels)
  assert v.status == 'WARN' and 'one class' in v.summary


def test_human_baseline_is_reported_or_asked_for():
  assert checks.human_baseline(0.96, 0.9, 500).status == 'PASS'
  assert checks.human_baseline(None, 0.9, 500).status == 'WARN'


class ZeroInitScale(nn.Module):
  """Correct: a residual branch behind a scale that starts at 0 (a ResNet block's last
  BatchNorm), so the branch's layer gets no gradient until the scale moves."""
  @nn.compact
  def __call__(self, x, train=False):
    h = x.reshape(x.shape[0], -1)
    scale = self.param('scale', nn.initializers.zeros, (16,))
    return nn.Dense(5)(nn.Dense(16)(h) + scale * nn.relu(nn.Dense(16, name='branch')(h)))


def gradients_before_and_after(model, moved_leaf):
  apply_fn, variables, x, y = setup(model)
  grad_fn = jax.grad(lambda v, xb, yb: loss_fn(apply_fn(v, xb, False), yb).mean())
  trained = jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf + 0.5 if moved_leaf in jax.tree_util.keystr(path) else leaf,
      variables)
  return checks.gradients(grad_fn, variables, x, y, lambda: trained)


def test_a_gradient_zero_only_at_init_behind_a_zero_scale_passes_and_is_named():
  v = gradients_before_and_after(ZeroInitScale(), 'scale')
  assert v.status == 'PASS' and 'at init only' in v.summary and 'branch' in v.summary
  assert sorted(v.evidence['zero_at_init_only']) == ['params/branch/bias', 'params/branch/kernel']


def test_a_layer_that_stays_without_gradient_after_training_still_fails():
  v = gradients_before_and_after(DeadFirstLayer(), 'Dense_1')
  assert v.status == 'FAIL' and 'Dense_0' in v.summary and not v.evidence['zero_at_init_only']


class CrossDeviceBatchNorm(nn.Module):  # BatchNorm as the built-in ResNets build it
  axis_name: str | None = 'data'

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(16)(x.reshape(x.shape[0], -1))
    h = nn.BatchNorm(use_running_average=not train,
                     axis_name=self.axis_name if train else None)(h)
    return nn.Dense(5)(nn.relu(h))


def test_checks_bind_the_device_axis_of_cross_device_batchnorm_outside_the_sharded_step():
  model = CrossDeviceBatchNorm()
  x = jax.random.normal(jax.random.key(0), (6, 12))
  variables = model.init(jax.random.key(1), x[:1])
  apply_fn = state_lib.make_apply_fn(model, variables['batch_stats'], jax.random.key(2))
  v = checks.batch_dependency(apply_fn, variables['params'], x, jnp.arange(6) % 5, loss_fn, True)
  assert v.status == 'PASS' and 'batch statistics, as BatchNorm does' in v.summary
  # One member on the bound axis: the statistics of this batch, as one device computes them.
  local = CrossDeviceBatchNorm(axis_name=None).apply(variables, x, train=True,
                                                      mutable=['batch_stats'])[0]
  np.testing.assert_allclose(apply_fn(variables['params'], x, True), local, rtol=1e-6)
