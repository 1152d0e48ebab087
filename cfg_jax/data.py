"""Image-classification data: Fashion-MNIST from its idx files, any TFDS data set by name, or
npz files of images, labels and further per-example columns (e.g. precomputed text embeddings).

Batches are a pure function of (seed, step): grain shuffles a random-access source with a fresh
permutation per epoch, and the global batch at step s is elements [s·B, (s+1)·B) of that stream.
Each process reads only its own contiguous slice, so resuming at step s needs nothing but s, and
a run on P processes sees the same global batches as a run on one.
Images stay uint8 until they reach the device (`to_model_range`); `to_unit_range` and
`to_uint8` are the one conversion between uint8 and [−1, 1].
"""
import dataclasses
import gzip
import math
import os
import zipfile
import zlib

import grain
import jax
import jax.numpy as jnp
import numpy as np

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_IDX_FILES = {'train': 'train', 'test': 't10k'}


class DataError(ValueError):
  """A data set that cannot be found or read, or does not fit the config; the message says
  how to get it or what to set."""


class DataNotFoundError(DataError):
  """The data set is not where it was looked for (and may be elsewhere, e.g. in TFDS)."""


_GET_FASHION_MNIST = ('reinstall with `sudo apt-get install --reinstall dataset-fashion-mnist`, or '
                      'download the idx files again from '
                      'https://github.com/zalandoresearch/fashion-mnist')


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A random-access source over in-memory arrays (grain reads it by index)."""
  images: np.ndarray   # (N, H, W, C) uint8
  labels: np.ndarray   # (N,) int32
  columns: dict = dataclasses.field(default_factory=dict)   # further (N, ...) arrays by name

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': self.labels[i],
            **{name: column[i] for name, column in self.columns.items()}}


def all_images(source):
  """(images uint8, labels) of a whole random-access source."""
  if isinstance(source, ArraySource):
    return source.images, source.labels
  items = [source[i] for i in range(len(source))]
  return np.stack([x['image'] for x in items]), np.asarray([x['label'] for x in items], np.int32)


def _read_idx(path, ndim):
  """The uint8 array of a gzipped idx file with `ndim` dimensions, its size checked against its
  header (a cut download, a disk error)."""
  def damaged(reason):
    return DataError(f'{path} is truncated or corrupt ({reason}); '
                     f'{_GET_FASHION_MNIST}')
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise damaged(str(e) or type(e).__name__) from None
  header = 4 + 4 * ndim
  if len(raw) < header or raw[:4] != bytes([0, 0, 8, ndim]):
    raise damaged(f'not an idx file of {ndim}-d uint8 data')
  dims = tuple(int(d) for d in np.frombuffer(raw, '>u4', count=ndim, offset=4))
  if len(raw) - header != math.prod(dims):
    raise damaged(f'{len(raw) - header:,} bytes of data where its header {dims} says '
                  f'{math.prod(dims):,}')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split, directory=''):
  """Fashion-MNIST from the original idx files (Debian's dataset-fashion-mnist by default)."""
  directory = directory or DEBIAN_FASHION_MNIST
  prefix = _IDX_FILES.get(split)
  if prefix is None:
    raise DataError(f'fashion_mnist has splits {sorted(_IDX_FILES)}, not {split!r}')
  paths = [os.path.join(directory, f'{prefix}-{kind}-ubyte.gz') for kind in ('images-idx3', 'labels-idx1')]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise DataNotFoundError(
        f'Fashion-MNIST not found ({missing[0]} is missing). Install it with '
        f'`sudo apt-get install dataset-fashion-mnist`, or set --config.data.dir to a folder '
        f'holding the four idx .gz files.')
  images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
  if len(images) != len(labels):
    raise DataError(f'{paths[0]} holds {len(images):,} images but {paths[1]} {len(labels):,} '
                    f'labels: the files do not belong together; {_GET_FASHION_MNIST}')
  return ArraySource(images[..., None], labels.astype(np.int32))


NPZ_COLUMNS = {'images': 'image', 'labels': 'label'}   # file's name: batch key


def load_npz(split, directory):
  """DIRECTORY/SPLIT.npz: `images` (N, H, W, C) uint8 and `labels` (N,) int, plus any further
  (N, ...) columns, which reach the batches under their own names (e.g. `embeddings` (N, L, D)
  and `mask` (N, L) for precomputed text embeddings)."""
  path = os.path.join(directory, f'{split}.npz')
  if not os.path.exists(path):
    raise DataNotFoundError(f'{path} not found: an npz data set is a folder of SPLIT.npz files '
                            f'with images (N, H, W, C) uint8, labels (N,) and any further '
                            f'columns; set --config.data.dir to it')
  try:
    with np.load(path) as f:
      arrays = {name: f[name] for name in f.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(f'{path} cannot be read ({e})') from None
  missing = [k for k in NPZ_COLUMNS if k not in arrays]
  if missing:
    raise DataError(f'{path} has no {missing[0]} array (it holds {", ".join(sorted(arrays))})')
  images, labels = arrays.pop('images'), arrays.pop('labels').astype(np.int32)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f'{path}: images must be (N, H, W, C) uint8, got {images.shape} {images.dtype}')
  for name, column in {'labels': labels, **arrays}.items():
    if len(column) != len(images):
      raise DataError(f'{path}: {name} has {len(column):,} rows, images {len(images):,}')
  return ArraySource(images, labels, arrays)


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
  """The random-access source for `split` of `data_config.name`, checked against the config."""
  if data_config.name == 'npz':
    source = load_npz(split, data_config.dir)
  elif data_config.name == 'fashion_mnist':
    try:
      source = load_fashion_mnist(split, data_config.dir)
    except DataNotFoundError as idx_error:
      try:
        source = load_tfds('fashion_mnist', split, data_config.dir)
      except DataError:
        raise idx_error from None
  else:
    source = load_tfds(data_config.name, split, data_config.dir)
  _check_fits(source, data_config, f'{data_config.name} split {split!r}')
  return source


def _check_fits(source, data_config, name):
  """Image shape and (for in-memory sources: every) label against the config, before any
  compiling; TFDS labels are checked batch by batch as they are read."""
  if not len(source):
    raise DataError(f'{name} is empty')
  size, channels = data_config.get('image_size'), data_config.get('channels')
  shape = tuple(np.shape(source[0]['image']))
  if size and channels and shape != (size, size, channels):
    raise DataError(f'{name} has images of shape {shape}, the config says ({size}, {size}, '
                    f'{channels}); set config.data.image_size and config.data.channels')
  if isinstance(source, ArraySource) and 'num_classes' in data_config:
    check_labels(source.labels, data_config.num_classes)


def check_labels(labels, num_classes):
  """Labels must lie in [0, num_classes): num_classes itself is the null label ∅."""
  labels = np.asarray(labels)
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise DataError(f'label {int(bad[0])} is outside [0, {num_classes}); check '
                    f'config.data.num_classes')


def batches(source, *, seed, global_batch_size, start_step=0, num_threads=4, annotate=None):
  """Iterator over this process's slices of the global batches, from `start_step` on.

  annotate(example, index, epoch) -> example: a pure function of the example, its index in
  `source` and the epoch, applied in the input pipeline (e.g. a caption and its tokens).
  """
  n_proc, proc = jax.process_count(), jax.process_index()
  local = global_batch_size // n_proc
  ds = grain.MapDataset.source(source)
  if annotate is not None:
    n = len(source)
    ds = (ds.map_with_index(lambda i, ex: (i % n, ex))   # grain passes indices past len
          .shuffle(seed=seed)
          .repeat(None)
          .map_with_index(lambda p, ie: annotate(ie[1], ie[0], p // n)))
  else:
    ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.batch(local, drop_remainder=True)
  ds = ds[start_step * n_proc + proc::n_proc]
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(ds.to_iter_dataset(options))


def to_unit_range(images):
  """uint8 [0, 255] → float32 [−1, 1], the range the models and the classifier take (numpy in,
  numpy out; jax in, jax out)."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_model_range(images, pad_to=0):
  """uint8 [0, 255] → float32 [−1, 1], padded with −1 (black) to `pad_to` if asked."""
  x = to_unit_range(images)
  if pad_to and pad_to > x.shape[1]:
    before = (pad_to - x.shape[1]) // 2
    after = pad_to - x.shape[1] - before
    x = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), constant_values=-1.0)
  return x


def to_uint8(x):
  """[−1, 1] floats → uint8 images (rounded, clipped): the inverse of `to_unit_range`."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
