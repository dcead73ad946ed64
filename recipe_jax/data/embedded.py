"""The embedded datasets (generated offline by `tfds_builders`): names and TFDS versions, and
the arrays cache written beside their TFDS files."""

# name -> TFDS version (tfds_builders); 1.1.0: the same examples, prepared as array_record
EMBEDDED = {'mnist1d': '1.1.0', 'digits': '1.1.0'}
ARRAYS_CACHE = 'recipe_jax_arrays.npz'  # an embedded dataset as arrays, beside its TFDS files
