"""The one training engine: the train state, the plain train step, the batch order and feeds,
the loop and its hooks, the sharded evaluation, checkpoints and the device mesh."""
