"""The sanity stage's checks (recipe step 2), in the order they run: what each measures, when
it FAILs or WARNs, the causes it names and its advice. The measurements are in checks.py,
inside.py and probes.py; the diagnosis (diagnosis.py) reads the verdicts' causes and evidence.
"""
import math

from recipe_jax.diagnose.check_unit import Check

# the symptoms and the diagnosis carry the cause diagnosis found
DIAGNOSED = ('inputs_non_finite', 'inputs_identical', 'inputs_unnormalised', 'examples_mixed',
             'outputs_not_a_function', 'non_finite_gradients', 'loss_maximised',
             'targets_from_other_examples', 'targets_differ', 'symmetric_init',
             'vanishing_gradients', 'exploding_gradients', 'saturated_units', 'dying_relu',
             'initial_logits_too_large', 'inputs_detached', 'layers_cut_off',
             'labels_not_with_inputs', 'lr_too_low', 'lr_too_high', 'logits_squashed',
             'targets_not_a_function', 'ambiguous')


def _activations_seen(status, e):
  if e.get('program_read') is False:
    return True, ("the model's program could not be read, so dead units and saturation went "
                  'unjudged: log.txt names the operation it stopped at')
  return False, ('layers inside a lifted loop (nn.scan: a GRU, a scanned stack) cannot be '
                 'recorded; the gradient checks still see every kernel')


def _loss_at_init(status, e):
  if status == 'WARN':
    return False, ('the initial logits are a little large, so the first steps only shrink them; '
                   'it costs a few steps (a zero-initialised last layer starts at the expected '
                   'loss)')
  return None


def _init_well(status, e):
  if status == 'WARN':
    return False, ('the model starts away from the class priors; it costs only the first steps '
                   '(model.log_prior_output_bias=True sets them where the model has a bias)')
  return None


def _loss_signature(status, e):
  if status != 'WARN':
    return None
  if e.get('cause') == 'loss_floor':
    return False, (f"the loss's floor ({e.get('floor', math.nan):.3g}) is its soft targets': "
                   'expected when they are deliberate (label smoothing), and every check aims at '
                   'it; act only if your loss should reach 0')
  if e.get('cause') == 'loss_scaled':
    return False, (f"a constant multiple ({e.get('scale', math.nan):.3g}x) of the cross-entropy "
                   'trains the same under Adam; act if it was meant to be a sum, or with SGD, '
                   'whose learning rate it scales')
  return None


def _overfit_one_batch(status, e):
  if status == 'WARN':
    return True, ('one batch was still being learned when the steps ran out: rerun with more '
                  'sanity.overfit_steps before trusting that the model can memorise')
  return None


CHECKS = (
    Check('fixed_seed', ('sanity',),
          'two `sanity.seed_steps`-step runs with the seed, one with seed + 1',
          'the same seed gives different `params_sha256`, or another seed the same'),
    Check('loss_at_init', ('sanity',),
          'train-mode loss of the initial model on 20 batches of 64',
          'the mean is more than `sanity.init_loss_max_z` (5) batch-to-batch std from the '
          'expected loss: too low FAILs (labels leak); too high WARNs (initial logits not '
          'small), and FAILs from `sanity.init_loss_max_ratio` (2) x the expected loss. '
          'Expected: the configured loss itself on predictions of the class prior when the '
          'output bias is the log prior, else of the uniform distribution (for cross-entropy, '
          "the prior's entropy or log C)", advice=_loss_at_init),
    Check('loss_signature', ('sanity',),
          'the configured loss against the cross-entropy on the same logits (uniform, at init, '
          'after the short run), and where it is lowest over free logits (300 Adam steps on the'
          ' logits themselves), on 64 training labels and on them reordered',
          'the loss is lowest at other classes than the labels (`one_hot(labels - 1)`), its '
          'targets move when the batch is reordered (labels rolled or shuffled inside the '
          'loss), it falls without bound (a flipped sign) or becomes NaN; WARN when it is a '
          'constant multiple of the cross-entropy (a mean over the classes: 1/C) or has a floor'
          ' above 0 (soft targets: overfit_one_batch and loss_at_init aim at it)',
          causes=('loss_not_finite', 'loss_maximised', 'targets_from_other_examples',
                  'targets_differ', 'loss_floor', 'loss_scaled', 'loss_not_cross_entropy'),
          advice=_loss_signature),
    Check('init_well', ('sanity',),
          "`model.log_prior_output_bias` (on by default) sets the output layer's bias to the "
          'log class priors, in training too',
          'the bias differs from the log prior, or no bias of shape (C,) shifts the logits '
          'additively (something after the last layer)', advice=_init_well),
    Check('inputs_before_net', ('sanity',),
          'the exact arrays the train step gathers for step 0, as a picture grid with labels, '
          'plus shape, dtype, min/max/mean/std',
          'NaN/Inf, every example identical, or RMS > 3 (unnormalised); WARN when mean/std are '
          'off 0/1 mildly',
          causes=('inputs_non_finite', 'inputs_identical', 'inputs_unnormalised')),
    Check('batch_dependency', ('sanity',),
          "`jax.jacrev` of each example's loss with respect to every input of an 8-example "
          'batch, in eval and train mode; the matrix is plotted',
          "loss i depends on input j != i (BatchNorm's train-mode mixing is named, and eval "
          'mode is still checked)'),
    Check('eval_consistency', ('sanity',),
          'eval mode twice on 16 examples, and on the same batch reversed; train mode twice '
          'with the same dropout key, and with another',
          "eval outputs differ between the two calls, or an example's eval output changes with "
          'its position in the batch (a fixed dropout mask or a random draw in eval mode), or '
          "train mode differs under the same key (randomness from outside the pipeline's key "
          'streams)',
          causes=('outputs_not_a_function',)),
    Check('gradients', ('sanity',),
          'one backward pass',
          'NaN/Inf, or a parameter array whose gradient is all zero (named)',
          causes=('non_finite_gradients',)),
    Check('activations_seen', ('sanity',),
          'every layer with a kernel, recorded by module path as the model runs (Linen '
          "`intercept_methods`, NNX layer calls; no change to your code); and the model's "
          "traced program (`diagnose/program.py`): which nonlinearity made each layer's input, "
          'read through pooling, dropout, residual sums and attention, with SiLU, GELU and '
          'gates named whole',
          'never FAIL; WARN naming the layers no record saw (inside `nn.scan`, a `jax.lax` loop'
          ' or a custom op), or when the program cannot be read', advice=_activations_seen),
    Check('gradient_flow', ('sanity',),
          "each layer's kernel gradient norm at init and after the short run; picture "
          '`gradient_norms.png`',
          "vanishing: the first layer's gradient `sanity.max_gradient_ratio` (1e3) times "
          "smaller than the last's; exploding: that much larger, or a gradient over "
          "`sanity.max_relative_gradient` (10) times its weights' norm; at init and after",
          causes=('vanishing_gradients', 'exploding_gradients')),
    Check('dead_units', ('sanity',),
          'at each ReLU the program applies, named by the layer whose units they are: units '
          'zero for every example of the batch, and the share of the gradient arriving at them '
          'that passes; histograms at init and after in `layer_activations.png`',
          'over `sanity.max_dead_fraction` (0.5) at init and still after, with the cause (a '
          'negative bias against the pre-activation spread, or a bad init); after the short run'
          ' only when less than `sanity.min_gradient_share` (0.1) of the gradient passes; WARN '
          'when 90% die during the short run',
          causes=('dying_relu',)),
    Check('saturation', ('sanity',),
          'at each tanh, sigmoid or hard-tanh used as an activation (not a gate, nor inside '
          'SiLU or GELU): outputs pinned where the slope is under ~4% of its peak',
          'over `sanity.max_saturated_fraction` (0.5) at init; after the short run only when '
          'less than `sanity.min_gradient_share` (0.1) of the gradient passes them (a trained '
          'tanh net has many units at +-1)',
          causes=('saturated_units',)),
    Check('symmetric_init', ('sanity',),
          "units whose incoming weights equal another unit's exactly (the last layer exempt)",
          'over `sanity.max_copied_units` (0.5) of a layer: constant or zero init',
          causes=('symmetric_init',)),
    Check('dumb_baselines', ('sanity',),
          'majority class, class prior, and the model trained on zeroed inputs, against the '
          'real model trained for as long (`sanity.steps`, 500)',
          'the model beats the input-independent baseline by less than `sanity.baseline_margin`'
          ' (0.05) validation accuracy',
          causes=DIAGNOSED),
    Check('decreasing_loss', ('sanity',),
          "the real model's loss over those steps (plotted with the zero-input run)",
          'the last 10% of steps is not `sanity.min_loss_drop` (10%) below the first 10%, or '
          'the fitted slope is not negative',
          causes=DIAGNOSED),
    Check('prediction_dynamics', ('sanity',),
          'softmax outputs on 16 fixed validation examples every 25 steps, drawn over time',
          'never FAIL; WARN when they never move or collapse to one class'),
    Check('overfit_one_batch', ('sanity',),
          '`sanity.overfit_examples` (8) training examples for `sanity.overfit_steps` (500), as'
          ' long again once while the loss still falls by 20% over the last fifth; judged in '
          "train mode and in eval mode (deterministic: the model's own dropout keeps the "
          'train-mode loss up); loss curve and predictions next to labels',
          "loss above the loss's floor (loss_signature) + `sanity.overfit_max_loss` (0.05), or "
          'accuracy below 100%, in both modes and no longer falling; WARN when still falling at'
          ' the end (more steps)',
          causes=DIAGNOSED, advice=_overfit_one_batch),
    Check('human_baseline', ('sanity',),
          "`config.human_baseline` (0.96 for MNIST-1D) beside the model's sanity-run accuracy "
          'and the baselines',
          'never FAIL; WARN when not set'),
    Check('diagnosis', ('sanity',),
          'reads every measurement above and names the most likely cause of the failed '
          'symptoms, with its evidence, what else it found and what it rules out; runs a short '
          'learning-rate sweep (`sanity.lr_sweep`, x0.1 x10 x100) only when the loss does not '
          'fall or one batch is not memorised; the cause is also appended to each failed '
          'symptom',
          'FAIL when a symptom failed (or "ambiguous" with what was ruled out when no measured '
          'cause explains it); WARN when a cause was found while every symptom passed',
          causes=DIAGNOSED),
)
