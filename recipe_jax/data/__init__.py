"""Datasets: embedded, .npz and TFDS, read into memory or streamed by grain."""
