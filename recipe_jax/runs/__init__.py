"""Run directories: the identity a run records, finished runs read back, tune studies."""
