"""The reference classifier whose features the metrics use when Inception-v3 is out of reach.

Inception-v3 weights are a download these machines cannot make, so for the embedded default data
set (Fashion-MNIST) the project trains its own small CNN once (a few CPU minutes), saves it as an
orbax checkpoint and reuses it. Its 128-d global-average-pooled last convolutional layer is the
"penultimate" feature space (as Inception's pool3 is); its softmax gives the score and the class
agreement. Numbers measured with it are "FD-clf", never "FID".

  extractor = classifier.ensure_extractor(classifier.default_dir('fashion_mnist'), data_config)
  features, logits = extractor(images)       # images float (N, H, W, C) in [−1, 1]

This module owns the network, its training and its checkpoints; the extractor that runs it
(over the devices of a data mesh, like sampling) and the feature caches are in
`cfg_jax.eval.features`.
"""
import functools
import logging
import os
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import tqdm

from cfg_jax import checkpoint, config_lib, data, sharding
from cfg_jax.eval import features

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


# --- Checkpoints -------------------------------------------------------------------------------


def _manager(directory, read_only=False):
  return checkpoint.open_manager(os.path.join(os.path.abspath(directory), 'checkpoint'), keep=1,
                                 read_only=read_only)


def exists(directory):
  path = os.path.join(os.path.abspath(directory), 'checkpoint')
  return os.path.isdir(path) and _manager(directory, read_only=True).latest_step() is not None


def _model_and_init(meta):
  """The network `meta` describes, and its `init(rng) -> variables` on one dummy image."""
  model = Classifier(meta['num_classes'], tuple(meta['widths']), meta['dropout'])
  x = jnp.zeros((1, meta['image_size'], meta['image_size'], meta['channels']))
  return model, functools.partial(model.init, x=x)


def load_extractor(directory, mesh=None, batch_size=512):
  """The Extractor saved in `directory` by `train_classifier`, on this machine's devices."""
  if not exists(directory):
    raise FileNotFoundError(f'no classifier in {directory}; train one with '
                            f'launch/train_classifier.py --out={directory}')
  mngr = _manager(directory, read_only=True)
  step = mngr.latest_step()
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  mesh = mesh or sharding.make_mesh({'data': -1, 'fsdp': 1})
  model, init = _model_and_init(meta)
  abstract = sharding.abstract_output(init, jax.random.key(0), shardings=sharding.replicated(mesh))
  variables = mngr.restore(step, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(abstract))).variables
  return features.Extractor(model, variables, meta, mesh, batch_size)


# --- Training ----------------------------------------------------------------------------------


def train_classifier(directory, data_config=None, *, steps=2400, batch_size=128,
                     learning_rate=3e-3, weight_decay=1e-4, seed=0, augment=True, mesh=None,
                     progress=True):
  """Trains the reference classifier on `data_config`'s train split and saves it in `directory`.

  AdamW with warm-up and cosine decay, random ±2-pixel shifts. Test accuracy is measured on the
  eval split and stored with the weights; the test-split features are cached next to them.
  Returns the Extractor.
  """
  dc = data_config or config_lib.base_config().data
  mesh = mesh or sharding.make_mesh({'data': -1, 'fsdp': 1})
  sharding.check_divisible(batch_size, mesh)
  train_source = data.load_source(dc, dc.train_split)
  first = train_source[0]['image']
  meta = {'name': f'{dc.name}-cnn', 'data': dc.name, 'num_classes': int(dc.num_classes),
          'image_size': int(first.shape[0]), 'channels': int(first.shape[-1]),
          'widths': [32, 64, 128], 'dropout': 0.2, 'feature_dim': 128}
  model, init_variables = _model_and_init(meta)
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, min(100, steps // 10)),
                                                max(steps, 2))
  tx = optax.adamw(schedule, weight_decay=weight_decay)
  replicated = sharding.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=replicated)
  def init(rng):
    variables = init_variables(rng)
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
  feats, logits, test_labels = features.split_features(
      features.Extractor(model, variables, meta, mesh), dc, dc.eval_split, progress)
  meta['test_accuracy'] = float((logits.argmax(-1) == test_labels).mean())
  extractor = features.Extractor(model, variables, meta, mesh)
  log.info('classifier: test accuracy %.4f after %d steps (%.0f s)', meta['test_accuracy'], steps,
           train_seconds)

  mngr = _manager(directory)
  mngr.save(steps, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                           meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()
  features.save(directory, dc.eval_split, feats, logits, test_labels, meta)
  return extractor


def ensure_extractor(directory, data_config=None, *, steps=2400, progress=True, mesh=None):
  """Loads the classifier in `directory`, training it first (with a progress bar) if missing.

  Raises ValueError if the saved classifier was trained for another data set or image shape.
  """
  dc = data_config or config_lib.base_config().data
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
