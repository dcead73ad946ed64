"""The closed vocabulary of causes a verdict names (`Verdict.cause`): a code, and the few words a
sentence or a table uses for it. Diagnosis, advice, replicate and scale_up decide on these
codes, never on a verdict's sentence, so rewording a sentence changes no decision. A new cause
is one line here; `Verdict` refuses a code that is not.
"""

CAUSES = {
    # the inputs that enter the net (inputs_before_net)
    'inputs_non_finite': 'NaN or Inf inputs',
    'inputs_identical': 'identical inputs',
    'inputs_unnormalised': 'inputs not normalised',
    # the loss's own signature (loss_signature)
    'loss_not_finite': 'a loss that turns NaN or Inf on finite logits',
    'loss_maximised': 'loss maximised (a sign flipped)',
    'targets_from_other_examples': 'targets not a function of the inputs',
    'targets_differ': 'targets differ from the labels',
    'loss_floor': 'a loss with a floor above 0 (soft targets)',
    'loss_scaled': 'a loss scaled against cross-entropy',
    'loss_not_cross_entropy': 'another loss for the same targets',
    # the net, from its gradients, units and weights (sanity)
    'examples_mixed': 'examples mixed across the batch',
    'outputs_not_a_function': 'outputs not a function of the example',
    'non_finite_gradients': 'non-finite gradients',
    'symmetric_init': 'symmetric init',
    'vanishing_gradients': 'vanishing gradients',
    'exploding_gradients': 'exploding gradients',
    'saturated_units': 'saturated units',
    'dying_relu': 'dying ReLU',
    'initial_logits_too_large': 'initial logits too large',
    'inputs_detached': 'inputs do not reach the loss',
    'layers_cut_off': 'layers cut off from the loss',
    'labels_not_with_inputs': 'labels do not go with the inputs',
    'lr_too_low': 'learning rate far too small',
    'lr_too_high': 'learning rate too large',
    'logits_squashed': 'logits squashed before the loss',
    'targets_not_a_function': 'targets not a function of the inputs',
    'ambiguous': 'ambiguous',
    # the data (inspect, evaluate)
    'labels_by_rows': 'label encodings differ by rows',
    'classes_alike': 'two classes alike',
    'systematic_confusion': 'systematic confusion',
    'hard_task': 'a hard task',
    'random_label_noise': 'random label noise',
    'labels_block': 'a block of rows with other labels',
    'input_block': 'a block of rows with other inputs',
    'input_trend': 'inputs that drift along the rows',
    'gap_from_labels': 'a train-validation gap from the labels',
    'gap_from_labels_and_overfitting': 'a train-validation gap from the labels and overfitting',
    # conclusions over runs (replicate, scale_up)
    'metric_not_finite': 'a metric that is not a number',
    'lucky_seed': 'a lucky seed',
    'unlucky_seed': 'an unlucky seed',
    'trends_flip': 'a conclusion that flips at the larger scale',
    'trends_ranking': 'an order that changes at the larger scale',
    'nothing_to_check': 'nothing to check',
    'trends_all_faded': 'every conclusion faded',
    'run_diverged': 'a run that diverged',
}


def words(code: str | None) -> str:
  """The words for a cause code ('' for none)."""
  return CAUSES[code] if code else ''
