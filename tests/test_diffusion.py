"""The log-SNR schedule and Gaussian algebra of paper §2, against float64 derivations."""
import jax.numpy as jnp
import numpy as np

from cfg_jax import diffusion


def test_schedule_endpoints_and_monotone():
  u = jnp.linspace(0.0, 1.0, 1001)
  lam = np.asarray(diffusion.logsnr_schedule(u))
  np.testing.assert_allclose([lam[0], lam[-1]], [20.0, -20.0], atol=1e-3)
  assert np.all(np.diff(lam) < 0)
  assert np.all(np.isfinite(lam))


def test_schedule_matches_float64_formula():
  u = np.linspace(0, 1, 257)
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  want = -2 * np.log(np.tan(a * u + b))
  np.testing.assert_allclose(diffusion.logsnr_schedule(u), want, rtol=1e-5, atol=1e-4)


def test_variance_preserving_and_finite_at_extremes():
  lam = jnp.array([-20.0, -5.0, 0.0, 5.0, 20.0])
  alpha, sigma = diffusion.alpha_sigma(lam)
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, rtol=1e-6)
  lam64 = np.asarray(lam, np.float64)
  np.testing.assert_allclose(sigma, np.sqrt(1 / (1 + np.exp(lam64))), rtol=1e-6)
  np.testing.assert_allclose(alpha, np.sqrt(1 / (1 + np.exp(-lam64))), rtol=1e-6)
  for f in (diffusion.alpha_sigma(lam), diffusion.noise_level_input(lam),
            diffusion.forward_log_var(lam[:-1], lam[1:])):
    assert np.all(np.isfinite(np.asarray(f)))


def _bayes_posterior64(z, x, lam, lam_next):
  """q(z_λ′ | z_λ, x) by Bayes' rule from q(z_λ′ | x) and q(z_λ | z_λ′), in float64."""
  sig = lambda t: 1 / (1 + np.exp(-t))
  a, a_n = np.sqrt(sig(lam)), np.sqrt(sig(lam_next))
  s2, s2_n = sig(-lam), sig(-lam_next)
  ratio = a / a_n
  s2_cond = s2 - ratio ** 2 * s2_n                   # Var(z_λ | z_λ′)
  precision = 1 / s2_n + ratio ** 2 / s2_cond
  var = 1 / precision
  mean = var * (a_n * x / s2_n + ratio * z / s2_cond)
  return mean, var


def test_posterior_against_bayes_rule_in_float64():
  rng = np.random.default_rng(0)
  z, x = rng.normal(size=(6, 5)), rng.uniform(-1, 1, size=(6, 5))
  lam = np.array([-12.0, -3.0, -1.0, 0.5, 4.0, 9.0])
  lam_next = lam + np.array([0.3, 1.0, 2.5, 0.1, 3.0, 6.0])
  mean, log_var = diffusion.posterior(jnp.asarray(z, jnp.float32), jnp.asarray(x, jnp.float32),
                                      jnp.asarray(lam, jnp.float32), jnp.asarray(lam_next, jnp.float32))
  want_mean, want_var = _bayes_posterior64(z, x, lam[:, None], lam_next[:, None])
  np.testing.assert_allclose(mean, want_mean, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.exp(log_var), want_var[:, 0], rtol=2e-4)


def test_predictions_invert_the_forward_process():
  rng = np.random.default_rng(1)
  x, eps = rng.uniform(-1, 1, (4, 8, 8, 1)), rng.normal(size=(4, 8, 8, 1))
  lam = jnp.array([-6.0, -1.0, 2.0, 7.0])
  z = diffusion.diffuse(x, lam, eps)
  np.testing.assert_allclose(diffusion.predict_x(z, eps, lam), x, atol=2e-3)
  np.testing.assert_allclose(diffusion.predict_eps(z, x, lam), eps, atol=2e-3)
  v = diffusion.v_target(x, eps, lam)
  np.testing.assert_allclose(diffusion.eps_from_v(z, v, lam), eps, atol=1e-5)
