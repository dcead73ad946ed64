"""The training run's look inside the net: at every eval, each layer's gradient and weight
norms, its update-to-weight ratio over the step before, and the dead or saturated fraction of
its units (each ReLU, tanh or sigmoid the model's program applies, named by the layer whose
units they are), on one fixed training batch (`probes.measure`), written to TensorBoard under
`layers/...`. A layer whose ReLU units die, or whose gradient stops reaching the first layers,
after the first eval becomes a warning with the step it happened at.

Cost: one forward and backward pass of `probes.EXAMPLES` examples per eval, and a copy of the
kernels the step before (scripts/bench_monitor.py measures it against the step time).
"""
import jax
import numpy as np

from recipe_jax.diagnose import inside, probes
from recipe_jax import rng


def _local(tree):
  """This process's copy of a replicated tree, on one device: the probes run outside the
  mesh (on a pod every host measures its own, identical, copy)."""
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


class LayerMonitor:
  """A loop hook run after every step; it measures at the steps that are multiples of
  `every` (the evals). `warnings` lists what changed for the worse since the first
  measurement; `last` the latest numbers."""

  def __init__(self, exp, writer, every: int, max_gradient_ratio: float):
    self.exp, self.writer, self.every = exp, writer, max(1, every)
    self.max_gradient_ratio = max_gradient_ratio
    self.x, self.y = (np.asarray(a[:probes.EXAMPLES])
                      for a in (exp.dataset.x_train, exp.dataset.y_train))
    self.key = rng.stream_key(exp.config.seed, 'monitor', 0)
    self.order = self.kernels = self.program = None
    self.previous, self.first, self.first_step, self.last = None, None, None, {}
    self.warnings, self.warned = [], set()

  def __call__(self, step, state, step_metrics=None):
    due = step % self.every == 0
    if not due and (step + 1) % self.every:
      return
    params = _local(state.params)
    if self.order is None:
      self.prepare(state)
    if not self.order:  # no layer recorded (all inside a loop, or no kernels): nothing to watch
      return
    if due:
      self._measure(step, params, _local(state.batch_stats))
    self.previous = (probes.copy_kernels(self.kernels, params)
                     if (step + 1) % self.every == 0 else None)

  def prepare(self, state):
    """Finds the layers (a trace of the model, once per run; the first measurement does it
    when this was not called)."""
    variables = {'params': _local(state.params), 'batch_stats': _local(state.batch_stats)}
    self.program = probes.read_program(self.exp.model, variables, self.x, self.key)
    self.order, unseen = probes.layer_order(self.exp.model, variables, self.x, self.key)
    self.kernels = self.order + unseen

  def _measure(self, step, params, batch_stats):
    found = probes.measure(self.exp.model, self.exp.loss_fn, self.program, self.order,
                           self.kernels, params, batch_stats, self.x, self.y, self.key)
    scalars = {}
    for layer in self.kernels:
      scalars[f'layers/grad_norm/{layer}'] = found['grad_norm'][layer]
      scalars[f'layers/weight_norm/{layer}'] = found['weight_norm'][layer]
    if self.previous is not None:
      ratios = jax.device_get(probes.update_ratios(self.kernels, self.previous, params))
      scalars.update({f'layers/update_ratio/{k}': v for k, v in ratios.items()})
    for site in self.program.sites if self.program is not None else []:
      if site.judged and site.name in found['sites']:
        units = site.name.replace(f' {site.kind}', '').replace(' ', '')  # 'Dense_0', '#2'
        what = 'dead_fraction' if site.judged == 'dead' else 'saturated_fraction'
        scalars[f'layers/{what}/{units}'] = found['sites'][site.name][what]
    ratio = self._first_over_last(found)
    if ratio is not None:
      scalars['layers/grad_first_over_last'] = ratio
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self.first is None:
      self.first, self.first_step = scalars, step
    else:
      self._compare(step, scalars)
    self.last = {'step': step, **scalars}

  def _first_over_last(self, found):
    norms = [float(found['grad_norm'][k]) for k in self.order if k in found['grad_norm']]
    if len(norms) < 2 or not norms[-1] > 0 or not np.all(np.isfinite(norms)):
      return None
    return norms[0] / norms[-1]

  def _compare(self, step, now):
    for what, line in worse(self.first, self.first_step, now, step, self.max_gradient_ratio,
                            self.order[0], self.exp.config.optimizer.learning_rate):
      if what not in self.warned:
        self.warned.add(what)
        self.warnings.append(line)

  def summary(self) -> dict:
    return {'warnings': list(self.warnings), 'last': self.last}


def worse(first: dict, first_step: int, now: dict, step: int, max_gradient_ratio: float,
          first_layer: str, learning_rate: float) -> list[tuple]:
  """What got worse between the first measurement and this one: (key, words) for each layer
  whose ReLU input went dead (a fraction reaching `inside.DIED_DURING_RUN`), and for a
  gradient that stopped reaching the first layer (first / last under 1 / max_gradient_ratio)."""
  found = []
  for name, value in now.items():
    was = first.get(name)
    if was is None:
      continue
    if name.startswith('layers/dead_fraction/') and value >= inside.DIED_DURING_RUN > was:
      layer = name.split('/', 2)[-1]
      found.append((('dead', layer), f"{layer}'s ReLU units: {value:.0%} dead at step {step} "
                    f'({was:.0%} at step {first_step}): '
                    f'{inside.died_because(learning_rate)}'))
    if name == 'layers/grad_first_over_last' and value < 1 / max_gradient_ratio <= was:
      fell = (f'fell to {value:.2g}x the last layer\'s' if value > 0 else 'fell to zero')
      found.append((('vanishing',), f'vanishing gradients: the gradient reaching the first '
                    f'layer ({first_layer}) {fell} at step {step} ({was:.2g}x at step '
                    f'{first_step}): the first layers stopped learning'))
  return found
