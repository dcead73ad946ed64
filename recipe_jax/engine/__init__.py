"""The one training engine: train state, the pure jitted steps, the batch order, the loop and its hooks,
the sharded evaluation, checkpoints and the device mesh."""
