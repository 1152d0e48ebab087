"""Images into the reference classifier's feature space, and the cached features of real splits.

An extractor is any callable `images -> (features, logits)` on float images in [−1, 1], shaped
(N, H, W, C), returning numpy arrays (N, D) and (N, K); give it a `name` attribute so every
number can say what measured it. `Extractor` wraps the project's classifier
(`cfg_jax.eval.classifier`); an Inception-v3 with user-supplied weights plugs in the same way.

A real split's features are computed once per classifier and kept beside it
(features_<split>.npz), so the test-split reference and the train-split floor of a sweep cost
nothing on a rerun.
"""
import functools
import json
import os

import jax
import numpy as np
import tqdm

from cfg_jax import data, sharding


class Extractor:
  """images (N, H, W, C) in [−1, 1] → (features (N, D), logits (N, K)) as float32 numpy.

  Batches of `batch_size` are split over the mesh's devices; every call runs one compiled
  shape (the last batch is padded). Images larger than the classifier's input (a padded data
  set) are centre-cropped.
  """

  def __init__(self, model, variables, meta, mesh=None, batch_size=512):
    self.mesh = mesh or sharding.make_mesh({'data': -1, 'fsdp': 1})
    n_dev = self.mesh.size
    self.batch_size = max(n_dev, batch_size // n_dev * n_dev)
    self.meta = meta
    self.num_classes = meta['num_classes']
    self.image_size = meta['image_size']
    self.name = (f'{meta["name"]} (cfg_jax.eval.classifier, {meta["feature_dim"]}-d pooled '
                 f'features, test accuracy {100 * meta["test_accuracy"]:.2f}%)')
    self.variables = jax.device_put(variables, sharding.replicated(self.mesh))
    self._apply = jax.jit(functools.partial(model.apply, train=False))

  def __call__(self, images):
    images = np.asarray(images, np.float32)
    size = images.shape[1]
    if size < self.image_size or images.shape[-1] != self.meta['channels']:
      raise ValueError(f'the classifier takes {self.image_size}x{self.image_size}x'
                       f'{self.meta["channels"]} images, got {images.shape[1:]}')
    if size > self.image_size:
      a = (size - self.image_size) // 2
      images = images[:, a:a + self.image_size, a:a + self.image_size]
    batch = sharding.batch_sharding(self.mesh)
    feats, logits = [], []
    for s in range(0, len(images), self.batch_size):
      x = images[s:s + self.batch_size]
      n = len(x)
      x = np.pad(x, ((0, self.batch_size - n),) + ((0, 0),) * 3, mode='edge')
      f, l = jax.device_get(self._apply(self.variables, jax.device_put(x, batch)))
      feats.append(np.asarray(f[:n], np.float32))
      logits.append(np.asarray(l[:n], np.float32))
    if not feats:
      return np.zeros((0, self.meta['feature_dim']), np.float32), np.zeros((0, self.num_classes),
                                                                          np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def split_features(extractor, data_config, split, progress=True):
  """(features, logits, labels) of every image of a real split, computed now."""
  images, labels = data.all_images(data.load_source(data_config, split))
  chunk = 10_000   # bounds the float32 copy of the images held at once
  feats, logits = [], []
  for s in tqdm.trange(0, len(images), chunk, desc=f'features of {split}', disable=not progress):
    f, l = extractor(data.to_unit_range(images[s:s + chunk]))
    feats.append(f)
    logits.append(l)
  return np.concatenate(feats), np.concatenate(logits), labels


def _path(directory, split):
  return os.path.join(os.path.abspath(directory), f'features_{split}.npz')


def save(directory, split, feats, logits, labels, meta):
  """Caches a split's features beside the classifier described by `meta`."""
  path = _path(directory, split)
  tmp = path + '.tmp.npz'
  np.savez(tmp, features=feats, logits=logits, labels=labels,
           meta=np.str_(json.dumps(meta, sort_keys=True)))
  os.replace(tmp, path)


def real_features(extractor, directory, data_config, split, progress=True):
  """(features, logits, labels) of a whole real split, computed once and cached in `directory`
  (recomputed when the cache was written by another classifier)."""
  path = _path(directory, split)
  if os.path.exists(path):
    with np.load(path) as f:
      if str(f['meta']) == json.dumps(extractor.meta, sort_keys=True):
        return f['features'], f['logits'], f['labels']
  feats, logits, labels = split_features(extractor, data_config, split, progress)
  save(directory, split, feats, logits, labels, extractor.meta)
  return feats, logits, labels
