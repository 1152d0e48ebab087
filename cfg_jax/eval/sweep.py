"""A guidance sweep: class-balanced samples of a `cfg_jax.inference.Pipeline` at each w, scored.

Sample i uses noise stream i at every w (common random numbers), so the rows of a sweep differ
by w, not by noise. Each w's samples are kept on disk (samples_w<w>.npz, uint8), so an
interrupted sweep resumes at the first unfinished w and the grid of a finished one is read back.
"""
import json
import os
import time
from typing import Any, Callable, Optional

import numpy as np
import tqdm

from cfg_jax import data, inference
from cfg_jax.eval import metrics


def balanced_labels(n, num_classes):
  """0, 1, …, K−1, 0, 1, …: n labels, every class n // K or n // K + 1 times."""
  return np.arange(n, dtype=np.int32) % num_classes


def _w_file(directory, w):
  return os.path.join(directory, f'samples_w{w:g}.npz')


def load_samples(directory, w):
  """(uint8 images, labels) that `sweep` saved for w in `directory`."""
  with np.load(_w_file(directory, w)) as saved:
    return saved['images'], saved['labels']


def grid_samples(directory, ws, num_classes, per_class):
  """The first `per_class` saved samples of every class at each w, in [−1, 1], shaped
  (len(ws), num_classes, per_class, H, W, C) as `visualize.guidance_grid` takes them."""
  # Balanced labels: the r-th sample of class c is sample r·K + c.
  idx = (np.arange(per_class)[None, :] * num_classes + np.arange(num_classes)[:, None]).reshape(-1)
  grid = np.stack([load_samples(directory, w)[0][idx] for w in ws])
  return data.to_unit_range(grid).reshape((len(ws), num_classes, per_class) + grid.shape[2:])


def sample_for_w(pipe, w, labels, *, directory=None, steps=None, method=None, v=None, seed=0,
                 batch_size=256, progress=True, tag='', settings=None):
  """(uint8 samples for one w, whether they were read back from `directory`).

  Saved samples are reused only if their labels and `tag` (a string naming the settings that
  made them) match. `settings`: further keyword arguments of `Pipeline.sample` (time grid,
  guidance rule and its parameters).
  """
  path = directory and _w_file(directory, w)
  if path and os.path.exists(path):
    with np.load(path) as saved:
      if (np.array_equal(saved['labels'], labels) and 'tag' in saved.files
          and str(saved['tag']) == tag):
        return saved['images'], True
  settings = settings or {}
  # At w = 0 every rule but CFG++ and thresholding gives exactly ε(z, c), so the unguided path
  # (half the rows) suffices.
  full = inference.guidance_settings(pipe.config.sample, **settings)
  same_at_0 = full['rule'] != 'cfgpp' and not full['threshold']
  guidance = None if w == 0 and same_at_0 else np.full(len(labels), w, np.float32)
  x = pipe.sample(labels, guidance, steps=steps, method=method, v=v, seed=seed,
                  batch_size=batch_size, progress=progress, **settings)
  images = data.to_uint8(x)
  if path:
    tmp = path + '.tmp.npz'
    np.savez_compressed(tmp, images=images, labels=labels, w=np.float32(w), tag=np.str_(tag))
    os.replace(tmp, path)
  return images, False


def sweep(pipe, extractor, reference, ws, num_samples, *, directory=None, steps=None,
          method=None, v=None, seed=0, batch_size=256, k=3, progress=True, tag='',
          settings=None, on_row: Optional[Callable[[dict], Any]] = None):
  """Samples `num_samples` class-balanced images at each w and scores them; one row per w.

  With `directory`, each w's samples are kept there and reused on the next call. `on_row(row)`
  is called as each row is ready (e.g. to rewrite metrics.json). `tag` names anything else the
  samples depend on (e.g. the checkpoint), so that samples from other settings are never reused.
  """
  s = pipe.config.sample
  steps, method, v = steps or s.steps, method or s.method, s.v if v is None else v
  tag = json.dumps({'steps': steps, 'method': method, 'v': v if method == 'ancestral' else None,
                    'seed': seed, 'clip': s.clip, 'extra': tag, 'settings': settings or {}},
                   sort_keys=True)
  labels = balanced_labels(num_samples, pipe.num_classes)
  if directory:
    os.makedirs(directory, exist_ok=True)
  rows = []
  for w in tqdm.tqdm(ws, desc='guidance sweep', unit='w', disable=not progress):
    start = time.perf_counter()
    images, reused = sample_for_w(pipe, w, labels, directory=directory, steps=steps,
                                  method=method, v=v, seed=seed, batch_size=batch_size,
                                  progress=progress, tag=tag, settings=settings)
    row = {'w': float(w), 'sample_seconds': round(time.perf_counter() - start, 1),
           'reused_samples': reused}
    row.update(metrics.evaluate_images(extractor, data.to_unit_range(images), labels, reference,
                                       num_classes=pipe.num_classes, k=k, seed=seed))
    rows.append(row)
    if on_row is not None:
      on_row(row)
  return rows
