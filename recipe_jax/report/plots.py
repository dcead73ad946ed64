"""Pictures of examples: images for 2-D/3-D inputs, line plots for 1-D sequences."""
import io
import textwrap

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from recipe_jax import files  # noqa: E402
from recipe_jax import multihost


def save(fig, path) -> None:
  """Writes the figure (only process 0 of a multi-host job writes files) and closes it."""
  if multihost.is_leader():
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format='png')
    files.write_bytes(path, buffer.getvalue())
  plt.close(fig)


def draw_example(ax, x, title=''):
  x = np.asarray(x, np.float32)
  if x.ndim == 1:
    ax.plot(x, linewidth=1)
  elif x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 1):
    ax.imshow(x.reshape(x.shape[0], x.shape[1]), cmap='gray')
  else:
    lo, hi = np.nanmin(x), np.nanmax(x)
    ax.imshow((x[..., :3] - lo) / max(hi - lo, 1e-8))
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=7)


def grid(path, examples, titles, columns, row_labels=None, title=None):
  """A grid of examples, `columns` per row, saved as PNG."""
  rows = max(1, -(-len(examples) // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.3 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for i, (x, example_title) in enumerate(zip(examples, titles)):
    if x is None:  # a blank cell keeps rows aligned (e.g. a class with few examples)
      continue
    ax = axes.flat[i]
    ax.axis('on')
    draw_example(ax, x, example_title)
  if row_labels:
    for r, label in enumerate(row_labels):
      axes[r, 0].set_ylabel(label, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save(fig, path)


def class_counts(path, counts: dict, ylabel: str = 'examples'):
  """Grouped bars: examples (or their fraction) per class for each split."""
  fig, ax = plt.subplots(figsize=(7.5, 3))
  width = 0.8 / len(counts)
  num_classes = len(next(iter(counts.values())))
  for i, (split, per_class) in enumerate(counts.items()):
    ax.bar(np.arange(num_classes) + (i - (len(counts) - 1) / 2) * width, per_class, width,
           label=split)
  ax.set_xticks(range(num_classes))  # one tick per class, under its group of bars
  ax.set_xlim(-0.6, num_classes - 0.4)
  ax.set_xlabel('class')
  ax.set_ylabel(ylabel)
  ax.legend(title='split', loc='upper left', bbox_to_anchor=(1.01, 1), fontsize=8)
  fig.tight_layout()
  save(fig, path)


def curves(path, series: dict, xlabel: str, ylabel: str, logy: bool = False,
           hlines: dict | None = None, logx: bool = False, vlines: dict | None = None,
           ylim: tuple | None = None, integer_x: bool = False, points: dict | None = None):
  """Line plot of {label: (x, y)}, with optional labelled reference lines and marked points."""
  many = len(series) > 6  # e.g. one line per layer: colours in order, the legend beside
  fig, ax = plt.subplots(figsize=(7.5 if many else 6, 3.2))
  shades = plt.cm.viridis(np.linspace(0, 0.9, len(series))) if many else [None] * len(series)
  for (label, (x, y)), color in zip(series.items(), shades):
    ax.plot(x, y, label=label, linewidth=1.2, marker='o' if integer_x else None, markersize=4,
            color=color)
  for i, (label, (x, y)) in enumerate((points or {}).items()):
    ax.plot(x, y, 'x', color=f'C{i}', markersize=9, markeredgewidth=2, label=label)
  if integer_x:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  references = [(ax.axhline, item) for item in (hlines or {}).items()]
  references += [(ax.axvline, item) for item in (vlines or {}).items()]
  for i, (draw, (label, value)) in enumerate(references):
    draw(value, linestyle='--', color=f'C{len(series) + i}', linewidth=1, label=label)
  if logy:
    ax.set_yscale('log')
  if logx:
    ax.set_xscale('log')
  if ylim:
    ax.set_ylim(*ylim)
  if logy and ax.get_ylim()[1] / ax.get_ylim()[0] < 100:  # under two decades: plain numbers
    def one_two_five(value, _):  # at 1, 2 and 5 times a power of ten, so labels do not collide
      mantissa = value / 10 ** np.floor(np.log10(value)) if value > 0 else 0
      return f'{value:g}' if round(mantissa, 3) in (1, 2, 5) else ''
    for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
      set_formatter(matplotlib.ticker.FuncFormatter(one_two_five))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if many:
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  else:
    ax.legend(fontsize=8)
  fig.tight_layout()
  save(fig, path)


def lr_range(path, lrs, curves: list, suggestion: float, stop_factor: float):
  """The LR range test: each seed's smoothed loss against the learning rate (log-log), the rule
  it is cut by drawn as a dotted line in its colour (stop_factor x its running minimum: above
  it the seed diverged, marked x), the suggestion as a dashed line. The y ticks are labelled
  and include the lowest loss. Drawn up to 10x the initial loss, so an explosion shows without
  hiding the rest. `curves`: [{'seed', 'suggestion', 'smoothed_loss', 'diverged_at_lr'}]."""
  lrs = np.asarray(lrs, float)
  fig, ax = plt.subplots(figsize=(8.4, 3.6))
  lowest, top = np.inf, 0.0
  for i, c in enumerate(curves):
    smooth = np.asarray(c['smoothed_loss'], float)
    smooth = np.where(np.isfinite(smooth), smooth, np.nan)
    lowest, top = min(lowest, np.nanmin(smooth)), max(top, min(np.nanmax(smooth),
                                                               10 * smooth[0]))
    ax.plot(lrs, smooth, color=f'C{i}', linewidth=1.2,
            label=f"seed {c['seed']} (suggests {c['suggestion']:.2g})")
    ax.plot(lrs, stop_factor * np.fmin.accumulate(smooth), ':', color=f'C{i}', linewidth=1,
            label=f'{stop_factor:g}x its running minimum (above: diverged)' if i == 0 else None)
    if c['diverged_at_lr'] is not None:
      at = min(int(np.searchsorted(lrs, c['diverged_at_lr'])), len(lrs) - 1)
      ax.plot([lrs[at]], [smooth[at]], 'x', color=f'C{i}', markersize=9, markeredgewidth=2,
              label=f"seed {c['seed']} diverged")
  ax.axvline(suggestion, linestyle='--', color='gray', linewidth=1,
             label=f'suggestion {suggestion:.2g}')
  ax.set_xscale('log')
  ax.set_yscale('log')
  low, high = 0.8 * lowest, 1.2 * top
  ax.set_ylim(low, high)
  decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
  nice = [m * 10.0 ** e for e in decades for m in (1, 1.5, 2, 3, 5, 7)]
  ticks = [lowest] + [t for t in nice if low <= t <= high and abs(np.log(t / lowest)) > 0.08]
  ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
  ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:.3g}'))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel('learning rate (log scale)')
  ax.set_ylabel('smoothed training loss (log scale)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # beside: never on a curve
  fig.tight_layout()
  save(fig, path)


def feature_map(path, values, example_shape, title: str, threshold=None, histograms=None,
                features=()) -> str:
  """A value per input feature where the features sit: a heat map over an image's pixels
  (the largest over its channels), bars over a sequence's positions. With `histograms`
  ({split: inputs}), the distributions of `features` in each split beside it."""
  values = np.asarray(values, float).reshape(example_shape)
  panels = 1 + len(features) if histograms else 1
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
  ax = axes[0, 0]
  if values.ndim >= 2:
    shown = values.reshape(*values.shape[:2], -1).max(-1)
    image = ax.imshow(shown, cmap='magma', vmin=0, vmax=max(1.0 if threshold else 0,
                                                            float(shown.max())))
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel('column')
    ax.set_ylabel('row')
  else:
    ax.bar(np.arange(len(values)), values, color='C3')
    if threshold is not None:
      ax.axhline(threshold, linestyle='--', color='gray', label=f'shortcut from {threshold:g}')
      ax.legend(fontsize=7)
    ax.set_xlabel('position')
  ax.set_title(title, fontsize=8)
  for ax, feature in zip(axes[0, 1:], features):
    for i, (split, x) in enumerate(histograms.items()):
      column = np.asarray(x, float).reshape(len(x), -1)[:, feature]
      ax.hist(column, bins=30, alpha=0.5, density=True, color=f'C{i}', label=split)
    ax.set_title(f'feature {feature} at {list(np.unravel_index(feature, example_shape))}',
                 fontsize=8)
    ax.set_xlabel('raw value')
    ax.set_ylabel('density')
    ax.legend(fontsize=7)
  fig.tight_layout()
  save(fig, path)
  return path


LOSS_FLOOR = 1e-7  # a loss of exactly 0 cannot sit on a log axis: drawn here, and said so


def loss_and_accuracy(path, steps, losses, accuracies, xlabel: str, target_loss=None,
                      series: dict | None = None):
  """Two panels over the same steps: the loss on a log scale (values below LOSS_FLOOR drawn at
  it, so a loss that reaches 0 does not vanish), the accuracy on a linear one. `series` adds
  other runs' {label: (steps, losses, accuracies)} (a validation curve, say; one step: a
  point)."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
  runs = {'training': (steps, losses, accuracies), **(series or {})}
  for i, (label, (x, loss, accuracy)) in enumerate(runs.items()):
    style = dict(color=f'C{i}', linewidth=1.2, label=label, marker='o' if len(x) == 1 else None)
    ax_loss.plot(x, np.maximum(np.asarray(loss, float), LOSS_FLOOR), **style)
    ax_acc.plot(x, accuracy, **style)
  if target_loss:
    ax_loss.axhline(target_loss, linestyle='--', color='gray', linewidth=1,
                    label=f'target loss {target_loss:g}')
  if np.nanmin(np.asarray(losses, float)) < LOSS_FLOOR:
    ax_loss.axhline(LOSS_FLOOR, linestyle=':', color='black', linewidth=0.8,
                    label=f'loss 0 drawn at {LOSS_FLOOR:g}')
  ax_loss.set_yscale('log')
  ax_loss.set_ylabel('loss (log scale)')
  ax_acc.set_ylim(-0.02, 1.02)
  ax_acc.set_ylabel('accuracy')
  for ax in (ax_loss, ax_acc):
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
  fig.tight_layout()
  save(fig, path)


def scatter(path, x, y, xlabel: str, ylabel: str, logx: bool = False,
            vlines: dict | None = None):
  """Points (x, y), e.g. a sweep's metric against one parameter, with the range's bounds."""
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.scatter(x, y, s=18)
  for i, (label, value) in enumerate((vlines or {}).items()):
    ax.axvline(value, linestyle='--', color=f'C{i + 1}', linewidth=1, label=f'{label} {value:g}')
  if logx:
    ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if vlines:
    ax.legend(fontsize=8)
  fig.tight_layout()
  save(fig, path)


def bars(path, values: dict, ylabel: str):
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.bar(list(values), list(values.values()), color=[f'C{i}' for i in range(len(values))])
  for i, v in enumerate(values.values()):
    ax.text(i, v, f'{v:.3f}', ha='center', va='bottom', fontsize=8)
  ax.set_ylabel(ylabel)
  fig.tight_layout()
  save(fig, path)


def matrix(path, values, xlabel: str, ylabel: str, title: str):
  fig, ax = plt.subplots(figsize=(4, 3.5))
  image = ax.imshow(values, cmap='viridis')
  fig.colorbar(image, ax=ax)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  save(fig, path)


def prediction_dynamics(path, probabilities, eval_steps, labels, columns: int = 4):
  """One panel per example: predicted class probabilities (rows) over training (columns),
  the true class outlined."""
  p = np.asarray(probabilities)  # (evals, examples, classes)
  rows = -(-p.shape[1] // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 1.9 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for i, label in enumerate(labels):
    ax = axes.flat[i]
    ax.axis('on')
    ax.imshow(p[:, i, :].T, aspect='auto', vmin=0, vmax=1, cmap='magma', origin='lower',
              extent=(eval_steps[0], eval_steps[-1], -0.5, p.shape[2] - 0.5))
    ax.axhline(label - 0.5, color='cyan', linewidth=0.8)
    ax.axhline(label + 0.5, color='cyan', linewidth=0.8)
    ax.set_title(f'example {i}, label {label}', fontsize=7)
    ax.tick_params(labelsize=6)
  axes[-1, 0].set_xlabel('step', fontsize=7)
  axes[-1, 0].set_ylabel('class', fontsize=7)
  fig.tight_layout()
  save(fig, path)


def confusion(path, counts, title: str):
  """Row-normalised colours (the fraction of each true class), counts written in the cells."""
  counts = np.asarray(counts)
  n = len(counts)
  fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  size = min(12, 2 + 0.45 * n)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  image = ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046, label='fraction of the true class')
  if n <= 30:
    for (t, p), c in np.ndenumerate(counts):
      if c:
        ax.text(p, t, str(c), ha='center', va='center', fontsize=7,
                color='white' if fractions[t, p] > 0.5 else 'black')
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  save(fig, path)


def reliability(path, confidence, correct, ece: float, ece_bins: int, bins: int = 10):
  """Accuracy against confidence in equal-width bins (bars, the count of examples on each; the
  diagonal is perfect calibration) beside how the confidences are spread. Equal-width bins
  show where a model is over- or under-confident even when most examples sit near 1.0, which
  the ECE's equal-mass bins crowd into one corner."""
  confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
  counts = np.bincount(which, minlength=bins)
  accuracy = np.bincount(which, weights=correct, minlength=bins) / np.maximum(counts, 1)
  centres = (edges[:-1] + edges[1:]) / 2
  fig, (ax, ax_hist) = plt.subplots(1, 2, figsize=(8, 3.6))
  filled = counts > 0
  ax.bar(centres[filled], accuracy[filled], width=1 / bins, edgecolor='C0', color='C0',
         alpha=0.6, label='accuracy of the examples in the bin')
  for x, y, n in zip(centres[filled], accuracy[filled], counts[filled]):
    ax.text(x, y + 0.02, str(n), ha='center', fontsize=7)
  ax.plot([0, 1], [0, 1], '--', color='gray', linewidth=1, label='perfectly calibrated')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.4)  # the legend sits above the bars and their counts
  ax.set_yticks(np.linspace(0, 1, 6))
  ax.set_xlabel('confidence (top-class probability)')
  ax.set_ylabel('accuracy in bin (n on each bar)')
  ax.set_title(f'accuracy in {bins} equal-width confidence bins', fontsize=9)
  ax.legend(fontsize=7, loc='upper left')
  fig.suptitle(f'ECE {ece:.3g}, over {ece_bins} equal-mass bins (the check\'s bins; not drawn)',
               fontsize=9)
  ax_hist.hist(confidence, bins=edges, color='C1', alpha=0.7)
  ax_hist.set_yscale('log')
  ax_hist.set_xlim(0, 1)
  ax_hist.set_xlabel('confidence (top-class probability)')
  ax_hist.set_ylabel('examples (log scale)')
  ax_hist.set_title(f'{len(confidence)} examples', fontsize=9)
  fig.tight_layout()
  save(fig, path)


def learning_curve(path, series: dict, points: dict, largest: float):
  """Validation error against training examples (log x): the measured means, every seed as a
  dot, the fitted power law continued to 4x the data, the extrapolated region shaded."""
  fig, (ax_err, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
  for label, (x, y) in points.items():
    ax_err.scatter(x, y, s=14, color='gray', alpha=0.7, label=label)
    ax_acc.scatter(x, 1 - np.asarray(y), s=14, color='gray', alpha=0.7, label=label)
  for i, (label, (x, y)) in enumerate(series.items()):
    style = dict(marker='o', markersize=4) if i == 0 else dict(linestyle='--')
    ax_err.plot(x, y, label=label, color=f'C{i}', linewidth=1.2, **style)
    ax_acc.plot(x, 1 - np.asarray(y), label=label, color=f'C{i}', linewidth=1.2, **style)
  ticks = sorted({int(round(x)) for _, (xs, _) in points.items() for x in xs} | {int(4 * largest)})
  for ax, ylabel in ((ax_err, 'validation error'), (ax_acc, 'validation accuracy')):
    ax.axvspan(largest, 4 * largest, color='C1', alpha=0.08)
    ax.set_xscale('log')
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))  # the sizes measured
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis='x', labelsize=7)
    ax.set_xlabel('training examples (shaded: extrapolated)')
    ax.set_ylabel(ylabel)
  ax_err.legend(fontsize=7)
  fig.tight_layout()
  save(fig, path)


def layer_histograms(path, panels: list, columns: int = 4):
  """One panel per layer: histograms of the values entering it, at init and after a short run.
  `panels`: [(title, {label: (counts, low, high)})]."""
  rows = max(1, -(-len(panels) // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 1.9 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for ax, (title, series) in zip(axes.flat, panels):
    ax.axis('on')
    for i, (label, (counts, low, high)) in enumerate(series.items()):
      edges = np.linspace(low, max(high, low + 1e-6), len(counts) + 1)
      ax.stairs(np.asarray(counts) / max(np.sum(counts), 1), edges, label=label, color=f'C{i}')
    ax.set_title(textwrap.fill(title, 42), fontsize=7)  # a long one wraps, never clipped
    ax.tick_params(labelsize=6)
    ax.set_yticks([])
  axes.flat[0].legend(fontsize=6)
  fig.supxlabel('value entering the layer (share of values per bin)', fontsize=8)
  fig.tight_layout()
  save(fig, path)


def per_layer(path, series: dict, layer_names: list, ylabel: str, logy: bool = True):
  """{label: one value per layer} against the layers in call order, named on the x axis."""
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layer_names)), 3.4))
  positions = np.arange(len(layer_names))
  for label, values in series.items():
    values = np.asarray(values, np.float64)
    if logy:  # a zero (no gradient at all) drawn at the bottom of the axis, not dropped
      values = np.where(values > 0, values, np.nan)
    ax.plot(positions, values, marker='o', markersize=4, linewidth=1.2, label=label)
  if logy and any(np.any(np.asarray(v) > 0) for v in series.values()):
    ax.set_yscale('log')
  ax.set_xticks(positions, layer_names, rotation=60, ha='right', fontsize=6)
  ax.set_xlabel('layer, first to last')
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save(fig, path)


def spread(path, groups: dict, ylabel: str, original: tuple, band: tuple):
  """Each group's runs as dots with their mean +- std, the original run as a star and the
  prediction interval of one more seed as a `band` (label, low, high) (replicate)."""
  fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(groups) + 1.5), 3.8))
  ax.fill_between([-0.45, 0.45], band[1], band[2], color='C0', alpha=0.15, label=band[0])
  for i, values in enumerate(groups.values()):
    values = np.asarray(values, float)
    jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
    ax.scatter(i + jitter, values, s=22, color=f'C{i}', zorder=3)
    if len(values) > 1:
      ax.errorbar(i + 0.25, values.mean(), yerr=values.std(ddof=1), fmt='_', color='k',
                  capsize=4, markersize=12, zorder=4)
  label, value = original
  ax.scatter([0], [value], marker='*', s=220, color='C3', edgecolor='k', zorder=5, label=label)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels(list(groups), fontsize=8, rotation=15)
  ax.set_xlim(-0.6, len(groups) - 0.4)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
  fig.tight_layout()
  save(fig, path)


def slopes(path, groups: dict, ylabel: str, scales: tuple, flipped: set):
  """Each group's mean +- std at the small and the larger scale, joined by a line: crossing
  lines are a ranking that changed; the groups of a flipped conclusion are drawn solid and
  thick, the others thin (scale_up)."""
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for i, (name, (small, large)) in enumerate(groups.items()):
    means = [np.mean(small), np.mean(large)]
    stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in (small, large)]
    bold = name in flipped
    ax.errorbar([0, 1], means, yerr=stds, color=f'C{i % 10}', marker='o', capsize=3,
                linewidth=2.4 if bold else 1.0, alpha=1.0 if bold or not flipped else 0.6,
                label=name + (' (in a flipped conclusion)' if bold else ''))
  ax.set_xticks([0, 1])
  ax.set_xticklabels(scales, fontsize=8)
  ax.set_xlim(-0.3, 1.3)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  save(fig, path)
