"""The configuration: every key with its default (`defaults`), the rule each value must pass and
the one list of stages (`check`), shared setups (`presets`), the metrics that may select a run
(`selection`)."""
