"""The guidance rule ε̃ = (1 + w)·ε_c − w·ε_u and its "scale" alias."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import guidance


def _preds():
  k1, k2 = jax.random.split(jax.random.key(0))
  return jax.random.normal(k1, (5, 4, 4, 3)), jax.random.normal(k2, (5, 4, 4, 3))


def test_rule_is_the_papers_formula_per_example_and_channel():
  c, u = _preds()
  w = jnp.array([-1.0, 0.0, 0.3, 1.0, 4.0])
  out = np.asarray(guidance.classifier_free(c, u, w), np.float64)
  c64, u64, w64 = (np.asarray(a, np.float64) for a in (c, u, w))
  want = (1 + w64[:, None, None, None]) * c64 - w64[:, None, None, None] * u64
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  # Every channel is guided: each one moves when w moves.
  delta = np.abs(np.asarray(guidance.classifier_free(c, u, w + 1.0)) - out).mean(axis=(0, 1, 2))
  assert np.all(delta > 0.1)


def test_w_zero_is_exactly_the_conditional_prediction():
  c, u = _preds()
  np.testing.assert_array_equal(guidance.classifier_free(c, u, jnp.zeros(5)), c)


def test_w_minus_one_is_the_unconditional_prediction():
  c, u = _preds()
  np.testing.assert_allclose(guidance.classifier_free(c, u, -jnp.ones(5)), u, atol=1e-6)


def test_scale_alias_agrees():
  c, u = _preds()
  s = jnp.array([0.0, 1.0, 1.5, 3.0, 7.5])
  by_scale = u + s[:, None, None, None] * (c - u)   # the common ε_u + s(ε_c − ε_u)
  np.testing.assert_allclose(guidance.classifier_free(c, u, guidance.w_from_scale(s)), by_scale,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guidance.scale_from_w(guidance.w_from_scale(s)), s)


# --- Variants after the paper, each against NumPy ----------------------------------------------

def _np(*arrays):
  return [np.asarray(a, np.float64) for a in arrays]


def test_apg_matches_numpy_over_two_steps_with_momentum():
  c, u = _preds()
  c2, u2 = c[::-1], u[::-1] * 0.5
  w, eta, r, beta = np.array([0.5, 1, 2, 3, 4.0]), np.array([0, 0.2, 0.5, 1, 0.0]), np.array(
      [np.inf, 5, 10, 3, 1.0]), np.array([-0.5, 0, -0.5, 0.3, -0.75])
  running = jnp.zeros_like(c)
  got = []
  for dc, du in ((c, u), (c2, u2)):
    out, running = guidance.apg(dc, du, w, eta=eta, norm_threshold=r, momentum=beta,
                                running=running)
    got.append(np.asarray(out))
  run64 = np.zeros(c.shape)
  for (dc, du), out in zip(((c, u), (c2, u2)), got):
    dc, du = _np(dc, du)
    for i in range(5):
      run64[i] = dc[i] - du[i] + beta[i] * run64[i]
      delta = run64[i] * min(1.0, r[i] / np.linalg.norm(run64[i]))
      par = (delta * dc[i]).sum() / (dc[i] ** 2).sum() * dc[i]
      want = dc[i] + w[i] * ((delta - par) + eta[i] * par)
      np.testing.assert_allclose(out[i], want, rtol=2e-5, atol=2e-5)


def test_apg_with_eta_one_no_momentum_no_threshold_is_the_papers_rule():
  c, u = _preds()
  w = jnp.array([-1.0, 0.0, 0.3, 1.0, 4.0])
  out, _ = guidance.apg(c, u, w, eta=1.0, norm_threshold=jnp.inf, momentum=0.0,
                        running=jnp.zeros_like(c))
  np.testing.assert_allclose(out, guidance.classifier_free(c, u, w), rtol=1e-5, atol=1e-5)


def test_rescale_matches_numpy_and_phi_zero_is_identity():
  c, u = _preds()
  g = guidance.classifier_free(c, u, jnp.full(5, 3.0))
  phi = np.array([0.0, 0.3, 0.7, 1.0, 0.5])
  out = np.asarray(guidance.rescale(g, c, phi), np.float64)
  g64, c64 = _np(g, c)
  for i in range(5):
    scaled = g64[i] * c64[i].std() / g64[i].std()
    np.testing.assert_allclose(out[i], phi[i] * scaled + (1 - phi[i]) * g64[i], rtol=1e-5, atol=1e-5)
    assert np.isclose(out[i].std(), (phi[i] * c64[i].std() / g64[i].std() + 1 - phi[i]) * g64[i].std())
  np.testing.assert_array_equal(np.asarray(guidance.rescale(g, c, 0.0)), np.asarray(g))


def test_dynamic_threshold_matches_numpy_percentiles():
  c, _ = _preds()
  x = c * jnp.array([0.3, 1.0, 2.0, 4.0, 8.0])[:, None, None, None]
  p = np.array([0.995, 0.9, 0.995, 0.5, 1.0])
  out = np.asarray(guidance.dynamic_threshold(x, p), np.float64)
  for i, xi in enumerate(_np(x)[0]):
    s = max(np.quantile(np.abs(xi), p[i]), 1.0)
    np.testing.assert_allclose(out[i], np.clip(xi, -s, s) / s, rtol=1e-5, atol=1e-6)
  assert np.abs(out).max() <= 1.0 + 1e-6
  np.testing.assert_allclose(out[0], np.asarray(x[0]), rtol=1e-6)   # |x| ≤ 1 mostly: s = 1


def test_schedules_against_closed_forms_and_mean_one():
  lam = np.linspace(-8.0, 12.0, 2001)
  f = (lam + 8) / 20
  want = {'constant': np.ones_like(lam), 'linear': 2 * f, 'cosine': 1 - np.cos(np.pi * f)}
  for kind, w in want.items():
    got = np.asarray(guidance.schedule_factor(kind, jnp.asarray(lam, jnp.float32), -8.0, 12.0))
    np.testing.assert_allclose(got, w, atol=1e-5)
    np.testing.assert_allclose(got.mean(), 1.0, atol=2e-3)
  table = (jnp.array([-8.0, 0.0, 12.0]), jnp.array([0.0, 3.0, 1.0]))
  got = guidance.schedule_factor('table', jnp.asarray(lam, jnp.float32), -8.0, 12.0, table)
  np.testing.assert_allclose(got, np.interp(lam, [-8, 0, 12], [0, 3, 1]), atol=1e-5)


def test_sigma_interval_converts_to_logsnr():
  sigma = np.array([0.28, 1.61, 80.0])
  np.testing.assert_allclose(guidance.sigma_to_logsnr(sigma), -2 * np.log(sigma), rtol=1e-6)
  # σ = e^{−λ/2} is the noise-to-signal ratio σ_λ / α_λ.
  lam = np.asarray(guidance.sigma_to_logsnr(sigma), np.float64)
  np.testing.assert_allclose(np.sqrt(1 / (1 + np.exp(lam))) / np.sqrt(1 / (1 + np.exp(-lam))),
                             sigma, rtol=1e-5)


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match='unknown guidance rule'):
    guidance.Guidance(w=1.0, rule='cfg+')
  with pytest.raises(ValueError, match='w table'):
    guidance.Guidance(w=1.0, schedule='table')
