"""Image-classification data: Fashion-MNIST from its idx files, or any TFDS data set by name.

Batches are a pure function of (seed, step): grain shuffles a random-access source with a fresh
permutation per epoch, and the global batch at step s is elements [s·B, (s+1)·B) of that stream.
Each process reads only its own contiguous slice, so resuming at step s needs nothing but s, and
a run on P processes sees the same global batches as a run on one.
Images stay uint8 until they reach the device (`to_model_range`).
"""
import dataclasses
import gzip
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_IDX_FILES = {'train': 'train', 'test': 't10k'}


class DataError(ValueError):
  """A data set that cannot be found or read; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A random-access source over in-memory arrays (grain reads it by index)."""
  images: np.ndarray   # (N, H, W, C) uint8
  labels: np.ndarray   # (N,) int32

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': self.labels[i]}


def _read_idx(path):
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  ndim = raw[3]
  dims = np.frombuffer(raw, '>u4', count=ndim, offset=4)
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split, directory=''):
  """Fashion-MNIST from the original idx files (Debian's dataset-fashion-mnist by default)."""
  directory = directory or DEBIAN_FASHION_MNIST
  prefix = _IDX_FILES.get(split)
  if prefix is None:
    raise DataError(f'fashion_mnist has splits {sorted(_IDX_FILES)}, not {split!r}')
  paths = [os.path.join(directory, f'{prefix}-{kind}-ubyte.gz') for kind in ('images-idx3', 'labels-idx1')]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise DataError(
        f'Fashion-MNIST not found ({missing[0]} is missing). Install it with '
        f'`sudo apt-get install dataset-fashion-mnist`, or set --config.data.dir to a folder '
        f'holding the four idx .gz files.')
  images, labels = (_read_idx(p) for p in paths)
  return ArraySource(images[..., None], labels.astype(np.int32))


class _TfdsSource:
  """A TFDS random-access source reduced to {'image', 'label'} (no TensorFlow needed)."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    ex = self._source[i]
    return {'image': np.asarray(ex['image'], np.uint8), 'label': np.int32(ex['label'])}


def load_tfds(name, split, data_dir=''):
  """Any prepared TFDS image-classification data set, through `tfds.data_source`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # TFDS raises many types: unknown name, not prepared, TF needed to build.
    raise DataError(
        f'TFDS could not provide {name!r} split {split!r}: {str(e).splitlines()[0]}. '
        f'Prepare it once with `tfds build {name}` (needs TensorFlow) or pass '
        f'--config.data.dir to where it is prepared.') from None
  return _TfdsSource(source)


def load_source(data_config, split):
  """The random-access source for `split` of `data_config.name`."""
  if data_config.name == 'fashion_mnist':
    try:
      return load_fashion_mnist(split, data_config.dir)
    except DataError as idx_error:
      try:
        return load_tfds('fashion_mnist', split, data_config.dir)
      except DataError:
        raise idx_error from None
  return load_tfds(data_config.name, split, data_config.dir)


def check_labels(labels, num_classes):
  """Labels must lie in [0, num_classes): num_classes itself is the null label ∅."""
  labels = np.asarray(labels)
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise DataError(f'label {int(bad[0])} is outside [0, {num_classes}); check '
                    f'config.data.num_classes')


def batches(source, *, seed, global_batch_size, start_step=0, num_threads=4):
  """Iterator over this process's slices of the global batches, from `start_step` on."""
  n_proc, proc = jax.process_count(), jax.process_index()
  local = global_batch_size // n_proc
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)
        .batch(local, drop_remainder=True))
  ds = ds[start_step * n_proc + proc::n_proc]
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(ds.to_iter_dataset(options))


def to_model_range(images, pad_to=0):
  """uint8 [0, 255] → float32 [−1, 1], padded with −1 (black) to `pad_to` if asked."""
  x = images.astype(jnp.float32) / 127.5 - 1.0
  if pad_to and pad_to > x.shape[1]:
    before = (pad_to - x.shape[1]) // 2
    after = pad_to - x.shape[1] - before
    x = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), constant_values=-1.0)
  return x


def to_uint8(x):
  """[−1, 1] floats → uint8 images, for grids and metrics."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
