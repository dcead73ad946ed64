"""The configuration: every key with its default (defaults), the rule each value must pass (check), presets and the
selection metrics with their directions."""
