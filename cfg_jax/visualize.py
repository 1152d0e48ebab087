"""Image grids: rows are classes, column blocks are guidance strengths w."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cfg_jax import data  # noqa: E402


def montage(images, cols):
  """(N, H, W, C) uint8 → one (rows·H, cols·W, C) image with 1-pixel gaps."""
  n, h, w, c = images.shape
  rows = -(-n // cols)
  canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, k = divmod(i, cols)
    canvas[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = img
  return canvas


def grid_inputs(w_values, classes, per_class):
  """(w, labels), both (len(w_values)·len(classes)·per_class,): the flat batch of a guidance
  grid in (w, class, repeat) order, so that its samples reshape to `guidance_grid`'s layout."""
  w = np.repeat(np.asarray(w_values, np.float32), len(classes) * per_class)
  labels = np.tile(np.repeat(np.asarray(classes, np.int32), per_class), len(w_values))
  return w, labels


def guidance_grid(samples, w_values, class_names, path, title=None):
  """Saves a labelled PNG of `samples`, shaped (len(w), num_classes, per_class, H, W, C) in [−1, 1]
  (the flat batch of `grid_inputs`, reshaped)."""
  n_w, n_cls, per_class = samples.shape[:3]
  fig, axes = plt.subplots(1, n_w, figsize=(1.0 + 0.45 * per_class * n_w, 0.9 + 0.45 * n_cls),
                           squeeze=False)
  for j, (ax, w) in enumerate(zip(axes[0], w_values)):
    grid = montage(data.to_uint8(samples[j].reshape((-1,) + samples.shape[3:])), per_class)
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap='gray', vmin=0, vmax=255)
    ax.set_title(f'w = {w:g}', fontsize=10)
    ax.set_xticks([])
    h = samples.shape[3] + 1
    ax.set_yticks([h * i + h / 2 - 1 for i in range(n_cls)] if j == 0 else [])
    if j == 0:
      ax.set_yticklabels(class_names, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def class_names(config):
  if config.data.name == 'fashion_mnist':
    return list(data.FASHION_MNIST_CLASSES)
  return [str(c) for c in range(config.data.num_classes)]
