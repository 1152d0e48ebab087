"""Fidelity and diversity of samples, measured in the feature space of any extractor.

Pure numpy / scipy (float64 where it matters) on features and logits (paper §8,
docs/RESULTS.md); the extractor that gives them is `cfg_jax.eval.features`:
  * `frechet_distance` of penultimate features ("FD-clf" with the project's classifier; "FID"
    only with the reference Inception-v3) against a real reference set, with `fd_bootstrap`
    errors and the paired errors of `fd_differences` along a sweep;
  * `inception_score` from the extractor's softmax (maximum = number of classes);
  * `class_agreement`: share of samples drawn for class c that the extractor labels c;
  * `precision_recall` (Kynkäänniemi et al. 2019, k-NN hyperspheres, k = 3);
  * `score_features`: all of them for one sample set; `real_floor`: for real images.
"""
import dataclasses
from typing import Optional

import numpy as np
import scipy.special

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


def real_floor(features, logits, labels, reference, n, *, num_classes, extractor, seed=0, k=3,
               splits=10):
  """The metrics of n real images (e.g. of the train split, given by their features) against the
  reference: what a perfect model would score at this sample count (FD-clf floor = real train
  vs test). The n rows are a fixed function of `seed`, so the floor is reproducible.
  `extractor`: the name of what gave the features.
  """
  idx = np.sort(np.random.default_rng(seed + 1).choice(len(labels), min(n, len(labels)),
                                                       replace=False))
  row = score_features(features[idx], logits[idx], np.asarray(labels)[idx], reference,
                       num_classes=num_classes, k=k, splits=splits, seed=seed)
  row.update(extractor=extractor, reference=reference.name, w=None)
  return row


def matched(rows, x_key, levels, y_key='fd_clf'):
  """`y_key` at each level of `x_key`, interpolated linearly between the sweep's points.

  Compares sweeps along their trade-off curves (e.g. FD-clf at equal class agreement) rather
  than at equal w. The points are ordered by `x_key`; a level outside their range gives None.
  """
  pts = sorted((r[x_key], r[y_key]) for r in rows)
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  return [float(np.interp(level, xs, ys)) if xs and xs[0] <= level <= xs[-1] else None
          for level in levels]
