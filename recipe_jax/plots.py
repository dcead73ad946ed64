"""Pictures of examples: images for 2-D/3-D inputs, line plots for 1-D sequences."""
import matplotlib

matplotlib.use('Agg')  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def grid(path, examples, titles, columns, row_labels=None):
  """A grid of examples, `columns` per row, saved as PNG."""
  rows = max(1, -(-len(examples) // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.3 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for i, (x, title) in enumerate(zip(examples, titles)):
    if x is None:  # a blank cell keeps rows aligned (e.g. a class with few examples)
      continue
    ax = axes.flat[i]
    ax.axis('on')
    draw_example(ax, x, title)
  if row_labels:
    for r, label in enumerate(row_labels):
      axes[r, 0].set_ylabel(label, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def class_counts(path, counts: dict):
  """Grouped bars: examples per class for each split."""
  fig, ax = plt.subplots(figsize=(7, 3))
  width = 0.8 / len(counts)
  for i, (split, per_class) in enumerate(counts.items()):
    ax.bar(np.arange(len(per_class)) + i * width, per_class, width, label=split)
  ax.set_xlabel('class')
  ax.set_ylabel('examples')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
