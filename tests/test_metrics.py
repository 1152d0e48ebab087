"""Metrics against independent float64 computations and closed forms."""
import os

import numpy as np
import pytest
import scipy.linalg

from cfg_jax.eval import metrics, report, sweep


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d)) * scale
  return a @ a.T / d + 0.1 * np.eye(d)


def _sqrtm_reference(mu1, s1, mu2, s2):
  """The textbook formula with scipy's general matrix square root, float64."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_frechet_closed_form_commuting_gaussians():
  # Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ commute: FD = ‖Δμ‖² + Σ (√a − √b)².
  rng = np.random.default_rng(0)
  d = 16
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)


def test_frechet_matches_scipy_sqrtm_and_is_symmetric():
  rng = np.random.default_rng(1)
  d = 32
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 0.5
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
  fd12 = metrics.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(fd12, _sqrtm_reference(mu1, s1, mu2, s2), rtol=1e-7)
  assert fd12 == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
  assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_from_samples_estimates_the_gaussian_distance():
  # N(0, I) vs N(m·1, 4·I) in d dims: FD = d·m² + d·(1 − 2)² = d·(m² + 1).
  rng = np.random.default_rng(2)
  d, n, m = 8, 200_000, 0.5
  x = rng.normal(size=(n, d))
  y = m + 2.0 * rng.normal(size=(n, d))
  np.testing.assert_allclose(metrics.frechet_distance_features(x, y), d * (m ** 2 + 1), rtol=0.02)
  assert metrics.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-8)
  assert metrics.frechet_distance_features(x, y) == pytest.approx(
      metrics.frechet_distance_features(y, x), rel=1e-10)


def test_frechet_handles_singular_covariances():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 64))     # fewer rows than dimensions: rank-deficient covariance
  y = rng.normal(size=(50, 64)) + 1.0
  fd = metrics.frechet_distance_features(x, y)
  assert np.isfinite(fd) and fd > 0
  assert metrics.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_inception_score_extremes():
  k, n = 10, 1000
  confident = np.eye(k)[np.arange(n) % k]       # every split is class-balanced
  assert metrics.inception_score(confident, splits=10) == pytest.approx((k, 0.0), abs=1e-9)
  uniform = np.full((n, k), 1.0 / k)
  assert metrics.inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0), abs=1e-9)
  one_class = np.eye(k)[np.zeros(n, int)]       # confident but no diversity
  assert metrics.inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-9)


def test_inception_score_matches_direct_formula():
  rng = np.random.default_rng(4)
  p = rng.dirichlet(np.ones(5) * 0.3, size=200)
  py = p.mean(0)
  want = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))
  assert metrics.inception_score(p, splits=1)[0] == pytest.approx(want, rel=1e-10)


def test_class_agreement():
  labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
  pred = np.array([0, 1, 1, 1, 2, 0, 2, 0])
  share, per_class = metrics.class_agreement(pred, labels, num_classes=4)
  assert share == pytest.approx(5 / 8)
  np.testing.assert_allclose(per_class[:3], [0.5, 1.0, 0.5])
  assert np.isnan(per_class[3])


def test_precision_recall_identical_and_disjoint():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(300, 16))
  assert metrics.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
  far = rng.normal(size=(300, 16)) + 100.0
  assert metrics.precision_recall(real, far, k=3) == (0.0, 0.0)


def test_precision_recall_detects_mode_collapse_and_matches_brute_force():
  rng = np.random.default_rng(6)
  centres = np.eye(8) * 20.0
  real = np.concatenate([c + rng.normal(size=(100, 8)) for c in centres])
  collapsed = centres[0] + rng.normal(size=(400, 8))    # one mode of eight: precise, no recall
  p, r = metrics.precision_recall(real, collapsed, k=3, batch_size=64)
  assert p > 0.7 and r < 0.2

  # Independent brute force: full distance matrices, sorted.
  def brute(manifold, queries, k=3):
    dm = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
    radii = np.sort(dm, axis=1)[:, k]
    dq = np.linalg.norm(queries[:, None] - manifold[None], axis=-1)
    return np.mean((dq <= radii[None]).any(1))

  assert p == pytest.approx(brute(real, collapsed))
  assert r == pytest.approx(brute(collapsed, real))


def test_score_features_row_and_table():
  rng = np.random.default_rng(7)
  k, n = 4, 200
  labels = sweep.balanced_labels(n, k)
  feats = rng.normal(size=(n, 6)) + labels[:, None]
  logits = 10.0 * np.eye(k)[labels]
  ref = metrics.Reference(rng.normal(size=(400, 6)) + rng.integers(0, k, 400)[:, None], 'toy')
  row = metrics.score_features(feats, logits, labels, ref, num_classes=k, splits=1)
  assert row['class_agreement'] == 1.0 and row['num_samples'] == n
  assert row['inception_score'] == pytest.approx(k, rel=1e-2)
  row.update(w=0.5, extractor='toy')
  table = report.format_table([row], real=row)
  assert '| 0.5 |' in table and 'real train' in table


class _StubPipe:
  """Stands in for cfg_jax.inference.Pipeline: images whose brightness encodes the label."""
  num_classes = 4

  def __init__(self):
    from cfg_jax import config_lib  # pylint: disable=g-import-not-at-top
    self.config = config_lib.base_config()
    self.config.sample.update(steps=8, method='ddim', v=0.3, clip=True)
    self.calls = []

  def sample(self, labels, w, *, steps, method, v, seed, batch_size, progress, **settings):
    del settings
    self.calls.append(None if w is None else float(w[0]))
    rng = np.random.default_rng(seed)
    base = labels[:, None, None, None] / 2.0 - 0.75
    spread = 0.1 * (1 + (0.0 if w is None else w[0]))
    return np.clip(base + spread * rng.normal(size=(len(labels), 4, 4, 1)), -1, 1)


def _stub_extractor(images):
  feats = images.reshape(len(images), -1)
  logits = -np.abs(feats.mean(1, keepdims=True) - (np.arange(4) / 2.0 - 0.75)) * 50
  return feats, logits


def test_sweep_resumes_finished_w_and_resamples_changed_settings(tmp_path):
  pipe = _StubPipe()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 400)
  ref = metrics.Reference(_stub_extractor(labels[:, None, None, None] / 2.0 - 0.75
                                          + 0.1 * rng.normal(size=(400, 4, 4, 1)))[0], 'stub')
  kw = dict(directory=str(tmp_path), progress=False, tag='ckpt@1')
  rows = sweep.sweep(pipe, _stub_extractor, ref, [0.0, 8.0], 40, **kw)
  assert pipe.calls == [None, 8.0]                      # w = 0 takes the unguided path
  assert [r['reused_samples'] for r in rows] == [False, False]
  assert rows[0]['class_agreement'] > rows[1]['class_agreement']
  assert rows[0]['fd_clf'] < rows[1]['fd_clf']

  os.remove(tmp_path / 'samples_w8.npz')                 # "interrupted" before w = 8 finished
  again = sweep.sweep(pipe, _stub_extractor, ref, [0.0, 8.0], 40, **kw)
  assert pipe.calls == [None, 8.0, 8.0]                   # only the missing w is sampled
  for a, b in zip(rows, again):
    assert a['fd_clf'] == b['fd_clf'] and a['precision'] == b['precision']

  sweep.sweep(pipe, _stub_extractor, ref, [0.0], 40, **dict(kw, tag='ckpt@2'))
  assert pipe.calls[-1] is None and len(pipe.calls) == 4  # another checkpoint: drawn again
  images, saved_labels = sweep.load_samples(str(tmp_path), 0.0)
  assert images.dtype == np.uint8 and len(saved_labels) == 40
  # The grid's row c holds samples drawn for class c: the stub's brightness is c / 2 − 0.75.
  grid = sweep.grid_samples(str(tmp_path), [0.0, 8.0], 4, 3)
  assert grid.shape == (2, 4, 3, 4, 4, 1)
  np.testing.assert_allclose(grid[0].mean((1, 2, 3, 4)), np.arange(4) / 2 - 0.75, atol=0.05)


def test_matched_interpolates_along_the_curve():
  rows = [{'w': 0.0, 'class_agreement': 0.4, 'fd_clf': 10.0},
          {'w': 4.0, 'class_agreement': 0.8, 'fd_clf': 7.0},
          {'w': 1.0, 'class_agreement': 0.6, 'fd_clf': 8.0}]
  got = metrics.matched(rows, 'class_agreement', [0.4, 0.5, 0.7, 0.8, 0.3, 0.9])
  assert got[:4] == pytest.approx([10.0, 9.0, 7.5, 7.0])
  assert got[4:] == [None, None]


def test_fd_bootstrap_pairs_resamples_across_sets():
  rng = np.random.default_rng(8)
  ref = metrics.Reference(rng.normal(size=(2000, 4)), 'ref')
  x = rng.normal(size=(300, 4)) + 0.3
  boot = metrics.fd_bootstrap(x, ref, n_boot=20)
  assert boot.shape == (20,) and boot.std() > 0
  np.testing.assert_array_equal(boot, metrics.fd_bootstrap(x + 0.0, ref, n_boot=20))
  rows = [{'w': w, 'num_samples': 300, 'fd_clf': metrics.frechet_distance_features(x + s, ref.features),
           'fd_clf_bootstrap': list(metrics.fd_bootstrap(x + s, ref, n_boot=20))}
          for w, s in ((0.0, 0.0), (1.0, 0.0), (2.0, 1.0))]
  d01, d12 = metrics.fd_differences(rows)
  assert (d01['difference'], d01['paired_std']) == (0.0, 0.0)     # same samples: no noise
  # A shift of every feature by 1 in 4 dims: FD rises by about 4 plus the 2·0.3 cross terms.
  assert d12['difference'] == pytest.approx(4 + 2 * 4 * 0.3, rel=0.2) and d12['paired_std'] > 0
