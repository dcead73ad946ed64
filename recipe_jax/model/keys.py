"""Which built-in model takes which `model.*` key: read by the config check (before anything
runs, with no JAX import) and by `models.create`. None in a key means the model's default."""

BUILT_IN = ('linear', 'mlp', 'cnn1d', 'gru', 'cnn2d', 'resnet18', 'resnet50', 'vit')
# What each is made for: 1-D sequences (B, L) or images (B, H, W, C); each takes either.
MADE_FOR = {'linear': 'sequence', 'mlp': 'sequence', 'cnn1d': 'sequence', 'gru': 'sequence',
            'cnn2d': 'image', 'resnet18': 'image', 'resnet50': 'image', 'vit': 'image'}

TAKEN_BY = {
    'width': ('mlp', 'cnn1d', 'gru', 'cnn2d', 'resnet18', 'resnet50', 'vit'),
    'depth': ('mlp', 'cnn1d', 'vit'),
    'dropout': ('mlp', 'cnn1d', 'cnn2d', 'vit'),
    'heads': ('vit',),
    'mlp_ratio': ('vit',),
    'patch_size': ('vit',),
    'pool': ('vit',),
}


def is_set(key: str, value) -> bool:
  """dropout's "off" is 0.0; every other key's is None."""
  return bool(value) if key == 'dropout' else value is not None


def problems(model_config: dict, takes=None) -> list:
  """One line per key set for a model that does not take it, naming the models that do. A
  user's model takes a key when its factory has an argument of that name (`takes(key)`, from
  its signature; without it, the user's keys are not judged here)."""
  name = model_config['name']
  found = []
  for key, takers in TAKEN_BY.items():
    value = model_config.get(key)
    if not is_set(key, value) or name in takers:
      continue
    if name in BUILT_IN:
      found.append(f"model.{key} is for {', '.join(takers)}; '{name}' does not take it")
    elif takes is not None and not takes(key):
      found.append(f"model.{key}={value}: your model '{name}' takes no {key} argument; add one "
                   f"(the built-in {', '.join(takers)} take it), or leave model.{key} unset")
  heads, width = model_config.get('heads'), model_config.get('width')
  if name == 'vit' and heads and width and width % heads:
    found.append(f'model.width={width} must be a multiple of model.heads={heads} (each head '
                 'gets width / heads features)')
  return found
