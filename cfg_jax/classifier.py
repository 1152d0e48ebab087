"""The reference classifier whose features the metrics use when Inception-v3 is out of reach.

Inception-v3 weights are a download these machines cannot make, so for the embedded default data
set (Fashion-MNIST) the project trains its own small CNN once (a few CPU minutes), saves it as an
orbax checkpoint and reuses it. Its 128-d global-average-pooled last convolutional layer is the
"penultimate" feature space (as Inception's pool3 is); its softmax gives the score and the class
agreement. Numbers measured with it are "FD-clf", never "FID".

  extractor = classifier.ensure_extractor(classifier.default_dir('fashion_mnist'), data_config)
  features, logits = extractor(images)       # images float (N, H, W, C) in [−1, 1]

The extractor splits its batches over the devices of a data mesh, like sampling does.
"""
import functools
import json
import logging
import os
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from cfg_jax import checkpoint, data, sharding

log = logging.getLogger('cfg_jax')

CACHE_ROOT = os.path.join(os.path.expanduser('~'), '.cache', 'cfg_jax', 'classifiers')


def default_dir(data_name):
  """Where the classifier for data set `data_name` lives unless told otherwise."""
  return os.path.join(CACHE_ROOT, data_name)


class Classifier(nn.Module):
  """conv-BN-ReLU blocks (1, 2, 2 convs at 28, 14, 7 px), global average pool, dense logits."""
  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, *, train=False):
    for level, width in enumerate(self.widths):
      for _ in range(1 if level == 0 else 2):
        x = nn.Conv(width, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
      if level != len(self.widths) - 1:
        x = nn.max_pool(x, (2, 2), (2, 2))
    features = x.mean((1, 2))
    logits = nn.Dense(self.num_classes)(nn.Dropout(self.dropout, deterministic=not train)(features))
    return features, logits


def _random_shift(rng, x, pad=2):
  """Each image moved by up to `pad` pixels in each direction (background −1 fills the gap)."""
  b, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


# --- The extractor -----------------------------------------------------------------------------


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
    self.name = (f'{meta["name"]} (cfg_jax.classifier, {meta["feature_dim"]}-d pooled features, '
                 f'test accuracy {100 * meta["test_accuracy"]:.2f}%)')
    self.variables = jax.device_put(variables, sharding.replicated(self.mesh))
    self._apply = jax.jit(functools.partial(model.apply, train=False))

  def __call__(self, images, progress=False):
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
    for s in tqdm.trange(0, len(images), self.batch_size, disable=not progress,
                         desc='features', unit='batch'):
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


# --- Checkpoints -------------------------------------------------------------------------------


def _manager(directory, read_only=False):
  return ocp.CheckpointManager(os.path.join(os.path.abspath(directory), 'checkpoint'),
                               options=checkpoint.options(keep=1, read_only=read_only))


def exists(directory):
  path = os.path.join(os.path.abspath(directory), 'checkpoint')
  return os.path.isdir(path) and _manager(directory, read_only=True).latest_step() is not None


def _model_and_abstract(meta, mesh):
  model = Classifier(meta['num_classes'], tuple(meta['widths']), meta['dropout'])
  x = jnp.zeros((1, meta['image_size'], meta['image_size'], meta['channels']))
  abstract = jax.eval_shape(functools.partial(model.init, x=x), jax.random.key(0))
  return model, sharding.abstract(abstract, sharding.replicated(mesh))


def load_extractor(directory, mesh=None, batch_size=512):
  """The Extractor saved in `directory` by `train_classifier`, on this machine's devices."""
  if not exists(directory):
    raise FileNotFoundError(f'no classifier in {directory}; train one with '
                            f'launch/train_classifier.py --out={directory}')
  mngr = _manager(directory, read_only=True)
  step = mngr.latest_step()
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  mesh = mesh or sharding.make_mesh({'data': -1, 'fsdp': 1})
  model, abstract = _model_and_abstract(meta, mesh)
  variables = mngr.restore(step, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(abstract))).variables
  return Extractor(model, variables, meta, mesh, batch_size)


# --- Training ----------------------------------------------------------------------------------


def _data_config(data_config):
  if data_config is None:
    return ml_collections.ConfigDict({'name': 'fashion_mnist', 'dir': '', 'train_split': 'train',
                                      'eval_split': 'test', 'num_classes': 10, 'num_threads': 2})
  return data_config


def _to_float(images):
  return np.asarray(images, np.float32) / 127.5 - 1.0


def all_images(source):
  """(images uint8, labels) of a whole random-access source."""
  if isinstance(source, data.ArraySource):
    return source.images, source.labels
  items = [source[i] for i in range(len(source))]
  return np.stack([x['image'] for x in items]), np.asarray([x['label'] for x in items], np.int32)


def train_classifier(directory, data_config=None, *, steps=2400, batch_size=128,
                     learning_rate=3e-3, weight_decay=1e-4, seed=0, augment=True, mesh=None,
                     progress=True):
  """Trains the reference classifier on `data_config`'s train split and saves it in `directory`.

  AdamW with warm-up and cosine decay, random ±2-pixel shifts. Test accuracy is measured on the
  eval split and stored with the weights; the test-split features are cached next to them.
  Returns the Extractor.
  """
  dc = _data_config(data_config)
  mesh = mesh or sharding.make_mesh({'data': -1, 'fsdp': 1})
  sharding.check_divisible(batch_size, mesh)
  train_source = data.load_source(dc, dc.train_split)
  first = train_source[0]['image']
  meta = {'name': f'{dc.name}-cnn', 'data': dc.name, 'num_classes': int(dc.num_classes),
          'image_size': int(first.shape[0]), 'channels': int(first.shape[-1]),
          'widths': [32, 64, 128], 'dropout': 0.2, 'feature_dim': 128}
  model, abstract = _model_and_abstract(meta, mesh)
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, min(100, steps // 10)),
                                                max(steps, 2))
  tx = optax.adamw(schedule, weight_decay=weight_decay)
  replicated = sharding.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=replicated)
  def init(rng):
    variables = model.init(rng, jnp.zeros((1, meta['image_size'], meta['image_size'],
                                           meta['channels'])))
    return variables, tx.init(variables['params'])

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(variables, opt_state, batch, step):
    rng_shift, rng_drop = jax.random.split(jax.random.fold_in(jax.random.key(seed), step))
    x = data.to_model_range(batch['image'])
    if augment:
      x = _random_shift(rng_shift, x)

    def loss_fn(params):
      (_, logits), updates = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
          rngs={'dropout': rng_drop}, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, (updates, (logits.argmax(-1) == batch['label']).mean())

    (loss, (updates, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    upd, opt_state = tx.update(grads, opt_state, variables['params'])
    params = optax.apply_updates(variables['params'], upd)
    return {'params': params, 'batch_stats': updates['batch_stats']}, opt_state, loss, acc

  variables, opt_state = init(jax.random.key(seed))
  batches = data.batches(train_source, seed=seed, global_batch_size=batch_size,
                         num_threads=dc.get('num_threads', 2))
  start = time.perf_counter()
  bar = tqdm.trange(steps, desc='train classifier', unit='step', disable=not progress,
                    dynamic_ncols=True)
  loss = acc = 0.0
  for step in bar:
    batch = sharding.global_batch(next(batches), mesh)
    variables, opt_state, loss, acc = train_step(variables, opt_state, batch, step)
    # One step in flight at a time: on an oversubscribed CPU, a queue of multi-device steps can
    # starve XLA's collective rendezvous (it aborts the process after 40 s).
    loss.block_until_ready()
    if step % 50 == 0 or step == steps - 1:
      bar.set_postfix(loss=f'{float(loss):.3f}', acc=f'{float(acc):.3f}', refresh=False)
  bar.close()
  train_seconds = time.perf_counter() - start

  meta.update(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
              augment=augment, train_seconds=round(train_seconds, 1),
              devices=f'{mesh.size} x {jax.devices()[0].platform}', test_accuracy=0.0)
  extractor = Extractor(model, variables, meta, mesh)
  test_images, test_labels = all_images(data.load_source(dc, dc.eval_split))
  feats, logits = extractor(_to_float(test_images), progress=progress)
  meta['test_accuracy'] = float((logits.argmax(-1) == test_labels).mean())
  extractor = Extractor(model, variables, meta, mesh)
  log.info('classifier: test accuracy %.4f after %d steps (%.0f s)', meta['test_accuracy'], steps,
           train_seconds)

  mngr = _manager(directory)
  mngr.save(steps, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                           meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()
  _save_features(directory, dc.eval_split, feats, logits, test_labels, meta)
  return extractor


def ensure_extractor(directory, data_config=None, *, steps=2400, progress=True, mesh=None):
  """Loads the classifier in `directory`, training it first (with a progress bar) if missing.

  Raises ValueError if the saved classifier was trained for another data set or image shape.
  """
  dc = _data_config(data_config)
  if exists(directory):
    extractor = load_extractor(directory, mesh)
  else:
    log.info('no classifier in %s: training one (%d steps)', directory, steps)
    extractor = train_classifier(directory, dc, steps=steps, progress=progress, mesh=mesh)
  m = extractor.meta
  if m['data'] != dc.name or m['num_classes'] != dc.num_classes:
    raise ValueError(f'the classifier in {directory} was trained on {m["data"]} '
                     f'({m["num_classes"]} classes), not {dc.name} ({dc.num_classes} classes); '
                     f'pass another --classifier_dir')
  return extractor


# --- Real-data features (cached next to the classifier) -----------------------------------------


def _features_path(directory, split):
  return os.path.join(os.path.abspath(directory), f'features_{split}.npz')


def _save_features(directory, split, feats, logits, labels, meta):
  path = _features_path(directory, split)
  tmp = path + '.tmp.npz'
  np.savez(tmp, features=feats, logits=logits, labels=labels,
           meta=np.str_(json.dumps(meta, sort_keys=True)))
  os.replace(tmp, path)


def real_features(extractor, directory, data_config=None, split='test', progress=True):
  """(features, logits, labels) of a whole real split, computed once and cached in `directory`."""
  dc = _data_config(data_config)
  path = _features_path(directory, split)
  if os.path.exists(path):
    with np.load(path) as f:
      if str(f['meta']) == json.dumps(extractor.meta, sort_keys=True):
        return f['features'], f['logits'], f['labels']
  images, labels = all_images(data.load_source(dc, split))
  feats, logits = [], []
  for s in tqdm.trange(0, len(images), 10_000, desc=f'features of {split}', disable=not progress):
    f, l = extractor(_to_float(images[s:s + 10_000]))
    feats.append(f)
    logits.append(l)
  feats, logits = np.concatenate(feats), np.concatenate(logits)
  _save_features(directory, split, feats, logits, labels, extractor.meta)
  return feats, logits, labels
