"""Fidelity and diversity of samples, measured in the feature space of any extractor.

An extractor is any callable `images -> (features, logits)` on float images in [−1, 1], shaped
(N, H, W, C), returning numpy arrays (N, D) and (N, K); give it a `name` attribute so every
number can say what measured it. `cfg_jax.classifier.load_extractor` gives the project's own
Fashion-MNIST classifier; an Inception-v3 with user-supplied weights plugs in the same way.

The metrics (paper §8, docs/RESULTS.md):
  * `frechet_distance` of penultimate features ("FD-clf" with the project's classifier; "FID"
    only with the reference Inception-v3) against a real reference set;
  * `inception_score` from the extractor's softmax (maximum = number of classes);
  * `class_agreement`: share of samples drawn for class c that the extractor labels c;
  * `precision_recall` (Kynkäänniemi et al. 2019, k-NN hyperspheres, k = 3).
All are plain numpy / scipy in float64 where it matters. `sweep` samples a guidance sweep from a
`cfg_jax.inference.Pipeline` and scores every w; it keeps per-w samples on disk so an
interrupted sweep resumes without redoing finished w values.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

import numpy as np
import scipy.special
import tqdm

from cfg_jax import inference

# --- Fréchet distance --------------------------------------------------------------------------


def feature_stats(features):
  """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'features must be (N >= 2, D), got shape {f.shape}')
  return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma):
  vals, vecs = np.linalg.eigh((sigma + sigma.T) / 2)
  return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½): the 2-Wasserstein distance between two Gaussians.

  tr (Σ₁Σ₂)^½ is computed as Σ √eig(Σ₁^½ Σ₂ Σ₁^½): that matrix is symmetric positive
  semi-definite, so the result is real and exactly symmetric in its arguments, where a general
  matrix square root of Σ₁Σ₂ (scipy.linalg.sqrtm) can return complex noise for singular
  covariances.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'feature dimensions differ: {mu1.shape} vs {mu2.shape}')
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
  diff = mu1 - mu2
  return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean, 0.0))


def frechet_distance_features(features1, features2):
  return frechet_distance(*feature_stats(features1), *feature_stats(features2))


# --- Scores from the extractor's softmax -------------------------------------------------------


def inception_score(probs, splits=10):
  """exp E_x KL(p(y|x) ‖ p(y)), p(y) per split; returns (mean, std) over `splits` splits.

  Splits are consecutive blocks, as in the reference implementation; shuffle first if the
  rows are ordered by class.
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[0] < splits:
    raise ValueError(f'probs must be (N >= splits={splits}, K), got shape {p.shape}')
  scores = []
  for part in np.array_split(p, splits):
    py = part.mean(0, keepdims=True)
    kl = scipy.special.rel_entr(part, py).sum(1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def class_agreement(predicted, labels, num_classes=None):
  """Share of samples whose predicted class equals the class they were drawn for.

  Returns (overall share, per-class shares (K,), NaN where a class has no samples).
  """
  predicted, labels = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
  if predicted.shape != labels.shape:
    raise ValueError(f'{predicted.shape[0]} predictions for {labels.shape[0]} labels')
  k = num_classes or int(max(predicted.max(initial=0), labels.max(initial=0))) + 1
  hit = predicted == labels
  count = np.bincount(labels, minlength=k)
  per_class = np.bincount(labels, weights=hit, minlength=k) / np.where(count, count, np.nan)
  return float(hit.mean()), per_class


# --- Precision and recall (Kynkäänniemi et al. 2019) --------------------------------------------


def _sq_dists(a, b):
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
  return np.maximum(d, 0.0)


def knn_radii(features, k=3, batch_size=1024):
  """Squared distance from each row to its k-th nearest other row (the row itself excluded)."""
  f = np.asarray(features, np.float64)
  if f.shape[0] <= k:
    raise ValueError(f'need more than k={k} feature rows, got {f.shape[0]}')
  out = np.empty(f.shape[0])
  for s in range(0, f.shape[0], batch_size):
    d = _sq_dists(f[s:s + batch_size], f)
    out[s:s + batch_size] = np.partition(d, k, axis=1)[:, k]   # index 0 is the row itself
  return out


def _coverage(manifold, radii, queries, batch_size):
  """Share of `queries` inside at least one k-NN hypersphere of `manifold`."""
  inside = np.zeros(queries.shape[0], bool)
  for s in range(0, queries.shape[0], batch_size):
    d = _sq_dists(queries[s:s + batch_size], manifold)
    inside[s:s + batch_size] = (d <= radii[None, :]).any(1)
  return float(inside.mean())


def precision_recall(real_features, fake_features, k=3, batch_size=1024):
  """Improved precision and recall: precision is the share of fakes inside the real manifold
  (union of k-NN balls around real points), recall the share of reals inside the fake one.

  Radii depend on the set sizes; compare like with like (equal numbers of real and fake).
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  precision = _coverage(real, knn_radii(real, k, batch_size), fake, batch_size)
  recall = _coverage(fake, knn_radii(fake, k, batch_size), real, batch_size)
  return precision, recall


# --- Everything for one set of samples ----------------------------------------------------------


@dataclasses.dataclass
class Reference:
  """Real-data features a sample set is compared with (e.g. the test split)."""
  features: np.ndarray             # (N_ref, D)
  name: str                        # e.g. 'fashion_mnist test (10000)'
  mu: Optional[np.ndarray] = None
  sigma: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.mu is None:
      self.mu, self.sigma = feature_stats(self.features)

  def subset(self, n, seed=0):
    """n reference rows chosen without replacement (all of them when n >= N_ref)."""
    if n >= len(self.features):
      return self.features
    return self.features[np.random.default_rng(seed).choice(len(self.features), n, replace=False)]


def extractor_name(extractor):
  return getattr(extractor, 'name', None) or getattr(extractor, '__name__', repr(extractor))


def fd_bootstrap(features, reference, n_boot=50, seed=0):
  """FD-clf of `n_boot` resamples (with replacement) of the sample features; reference fixed.

  The resampled indices depend only on (len(features), seed), so two sample sets of the same
  size whose row i shares its noise (a sweep) are resampled in pairs: the spread of the
  differences of their bootstrap values is the paired error of their FD difference.
  """
  features = np.asarray(features, np.float64)
  rng = np.random.default_rng(seed + 2)
  out = []
  for _ in range(n_boot):
    f = features[rng.integers(0, len(features), len(features))]
    out.append(frechet_distance(*feature_stats(f), reference.mu, reference.sigma))
  return np.asarray(out)


def fd_differences(rows):
  """FD-clf(w_b) − FD-clf(w_a) for consecutive w of a sweep, with the paired bootstrap std."""
  rows = sorted((r for r in rows if r.get('fd_clf_bootstrap')), key=lambda r: r['w'])
  return [{'w_from': a['w'], 'w_to': b['w'], 'difference': b['fd_clf'] - a['fd_clf'],
           'paired_std': float(np.std(np.subtract(b['fd_clf_bootstrap'], a['fd_clf_bootstrap'])))}
          for a, b in zip(rows, rows[1:])
          if len(a['fd_clf_bootstrap']) == len(b['fd_clf_bootstrap'])
          and a['num_samples'] == b['num_samples']]


def score_features(features, logits, labels, reference, *, num_classes, k=3, splits=10, seed=0,
                   n_boot=50):
  """Every metric for one sample set given its features and logits; a flat dict.

  The Inception-style score uses a fixed random order of the samples, so its splits are not
  blocks of one class. Precision/recall compare with `len(features)` reference rows.
  FD-clf comes with the std of `n_boot` bootstrap resamples (`fd_bootstrap`).
  """
  features, labels = np.asarray(features), np.asarray(labels).reshape(-1)
  n = len(features)
  mu, sigma = feature_stats(features)
  probs = scipy.special.softmax(np.asarray(logits, np.float64), axis=-1)
  order = np.random.default_rng(seed).permutation(n)
  is_mean, is_std = inception_score(probs[order], splits=min(splits, n))
  agreement, per_class = class_agreement(probs.argmax(-1), labels, num_classes)
  precision, recall = precision_recall(reference.subset(n, seed), features, k=k)
  boot = fd_bootstrap(features, reference, n_boot, seed) if n_boot else np.zeros(0)
  return {
      'fd_clf': frechet_distance(mu, sigma, reference.mu, reference.sigma),
      'fd_clf_std': float(boot.std()) if n_boot else None,
      'fd_clf_bootstrap': [round(float(b), 5) for b in boot],
      'inception_score': is_mean,
      'inception_score_std': is_std,
      'class_agreement': agreement,
      'precision': precision,
      'recall': recall,
      'num_samples': n,
      'per_class_agreement': [None if np.isnan(a) else float(a) for a in per_class],
  }


def evaluate_images(extractor, images, labels, reference, *, num_classes, k=3, splits=10, seed=0):
  """Every metric for `images` in [−1, 1] drawn for `labels`, stating the extractor and count."""
  features, logits = extractor(images)
  row = score_features(features, logits, labels, reference, num_classes=num_classes, k=k,
                       splits=splits, seed=seed)
  row.update(extractor=extractor_name(extractor), reference=reference.name)
  return row


def real_floor(extractor, images, labels, reference, n, *, num_classes, seed=0, k=3,
               splits=10):
  """The same metrics for n real images (e.g. of the train split, uint8) against the reference:
  what a perfect model would score at this sample count (FD-clf floor = real train vs test).

  The n images are a fixed function of `seed`, so the floor is reproducible.
  """
  idx = np.sort(np.random.default_rng(seed + 1).choice(len(labels), min(n, len(labels)),
                                                       replace=False))
  x = np.asarray(images[idx], np.float32)
  x = x / 127.5 - 1.0 if images.dtype == np.uint8 else x
  row = evaluate_images(extractor, x, np.asarray(labels)[idx], reference,
                        num_classes=num_classes, k=k, splits=splits, seed=seed)
  row['w'] = None
  return row


# --- A guidance sweep ---------------------------------------------------------------------------

ROW_KEYS = ('w', 'fd_clf', 'fd_clf_std', 'inception_score', 'inception_score_std', 'class_agreement',
            'precision', 'recall', 'num_samples', 'extractor')


def balanced_labels(n, num_classes):
  """0, 1, …, K−1, 0, 1, …: n labels, every class n // K or n // K + 1 times."""
  return np.arange(n, dtype=np.int32) % num_classes


def _w_file(directory, w):
  return os.path.join(directory, f'samples_w{w:g}.npz')


def load_samples(directory, w):
  """(uint8 images, labels) that `sweep` saved for w in `directory`."""
  with np.load(_w_file(directory, w)) as saved:
    return saved['images'], saved['labels']


def sample_for_w(pipe, w, labels, *, directory=None, steps=None, method=None, v=None, seed=0,
                 batch_size=256, progress=True, tag='', settings=None):
  """(uint8 samples for one w, whether they were read back from `directory`).

  Sample i uses noise stream i of `seed` at every w (common random numbers), so the rows of a
  sweep differ by w, not by noise. Saved samples are reused only if their labels and `tag`
  (a string naming the settings that made them) match. `settings`: further keyword arguments of
  `Pipeline.sample` (time grid, guidance rule and its parameters).
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
  images = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  if path:
    tmp = path + '.tmp.npz'
    np.savez_compressed(tmp, images=images, labels=labels, w=np.float32(w), tag=np.str_(tag))
    os.replace(tmp, path)
  return images, False


def sweep(pipe, extractor, reference, ws, num_samples, *, directory=None, steps=None,
          method=None, v=None, seed=0, batch_size=256, k=3, progress=True, tag='',
          settings=None, on_row: Optional[Callable[[dict], Any]] = None):
  """Samples `num_samples` class-balanced images at each w and scores them; one row per w.

  With `directory`, each w's samples are kept there as samples_w{w}.npz and reused on the next
  call, so an interrupted sweep resumes at the first unfinished w. `on_row(row)` is called as
  each row is ready (e.g. to rewrite metrics.json). `tag` names anything else the samples
  depend on (e.g. the checkpoint), so that samples from other settings are never reused.
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
    row.update(evaluate_images(extractor, images.astype(np.float32) / 127.5 - 1.0, labels,
                               reference, num_classes=pipe.num_classes, k=k, seed=seed))
    rows.append(row)
    if on_row is not None:
      on_row(row)
  return rows


# --- Reporting ----------------------------------------------------------------------------------


def format_table(rows, real=None, floatfmt='.3f'):
  """A Markdown table of sweep rows (and the real-data row first, if given)."""
  head = ('w', 'FD-clf ↓ (± bootstrap std)', 'score ↑ (± split std)', 'class agreement ↑', 'precision ↑', 'recall ↑', 'samples')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

  def line(label, r):
    vals = [format(r[key], floatfmt) for key in ('fd_clf', 'inception_score', 'class_agreement',
                                                   'precision', 'recall')]
    if r.get('fd_clf_std') is not None:
      vals[0] += f' ± {r["fd_clf_std"]:.2f}'
    vals[1] += f' ± {r["inception_score_std"]:.2f}'
    return '| ' + ' | '.join([label] + vals + [str(r['num_samples'])]) + ' |'

  if real is not None:
    lines.append(line('real train', real))
  lines += [line(f'{r["w"]:g}', r) for r in rows]
  return '\n'.join(lines)


def matched(rows, x_key, levels, y_key='fd_clf'):
  """`y_key` at each level of `x_key`, interpolated linearly between the sweep's points.

  Compares sweeps along their trade-off curves (e.g. FD-clf at equal class agreement) rather
  than at equal w. The points are ordered by `x_key`; a level outside their range gives None.
  """
  pts = sorted((r[x_key], r[y_key]) for r in rows)
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  return [float(np.interp(level, xs, ys)) if xs and xs[0] <= level <= xs[-1] else None
          for level in levels]


def write_csv(path, rows, real=None):
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(ROW_KEYS)
    if real is not None:
      writer.writerow(['real'] + [real[key] for key in ROW_KEYS[1:]])
    for r in rows:
      writer.writerow([r[key] for key in ROW_KEYS])


def write_json(path, payload):
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)


def plot_tradeoff(rows, path=None, real=None, title=None):
  """FD-clf against the score, class agreement and precision/recall; one labelled point per w.

  `rows` is one sweep's rows, or {label: rows} to draw several sweeps (e.g. one per p_uncond)
  on the same axes. Saves a PNG to `path` if given; returns the matplotlib figure.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  if path:
    matplotlib.use('Agg', force=False)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = rows if isinstance(rows, dict) else {None: rows}
  panels = [('inception_score', 'score (classifier softmax) ↑', 'fd_clf', 'FD-clf ↓'),
            ('class_agreement', 'class agreement ↑', 'fd_clf', 'FD-clf ↓'),
            ('recall', 'recall ↑', 'precision', 'precision ↑')]
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for ax, (xkey, xlabel, ykey, ylabel) in zip(axes, panels):
    for label, run in runs.items():
      run = sorted(run, key=lambda r: r['w'])
      xs, ys = [r[xkey] for r in run], [r[ykey] for r in run]
      ax.plot(xs, ys, 'o-', label=label)
      for x, y, r in zip(xs, ys, run):
        ax.annotate(f'w={r["w"]:g}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7)
    if real is not None:
      ax.plot([real[xkey]], [real[ykey]], '*', color='tab:red', markersize=12,
              label='real train data')
    if real is not None or len(runs) > 1:
      ax.legend(fontsize=8, loc='best')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  first = next((run for run in runs.values() if run), None)
  if first:
    n, name = first[0]['num_samples'], first[0]['extractor']
    fig.suptitle((title + '\n' if title else '') + f'{n} samples per w; features: {name}',
                 fontsize=9)
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=120)
  return fig
