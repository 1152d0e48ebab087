"""Training-recipe and sampler-grid options against independent float64 formulas: loss weights,
the λ distributions of Algorithm 1, EMA decays, the learning-rate schedule and the time grids;
the sampler under jax_debug_nans with one λ per example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion, objective, sampling
from conftest import tiny_config

LAMBDAS = np.linspace(-20.0, 20.0, 81)


@pytest.mark.parametrize('prediction', ['eps', 'v'])
@pytest.mark.parametrize('weighting,gamma,sigma_data', [('none', 5.0, 0.5), ('min_snr', 5.0, 0.5),
                                                        ('min_snr', 1.0, 0.5), ('edm', 5.0, 0.5),
                                                        ('edm', 5.0, 1.0)])
def test_loss_weights_match_float64_weights_on_x(prediction, weighting, gamma, sigma_data):
  snr = np.exp(LAMBDAS)                                     # float64
  native = snr if prediction == 'eps' else snr + 1.0        # the target's own weight on ‖x̂ − x‖²
  on_x = {'none': native, 'min_snr': np.minimum(snr, gamma),
          'edm': 1.0 / np.exp(-LAMBDAS) + 1.0 / sigma_data ** 2}[weighting]
  got = np.exp(np.asarray(objective.log_loss_weight(
      jnp.asarray(LAMBDAS, jnp.float32), weighting=weighting, prediction=prediction, gamma=gamma,
      sigma_data=sigma_data), np.float64))
  np.testing.assert_allclose(got, on_x / native, rtol=2e-5)


def test_v_loss_is_eps_loss_times_one_plus_one_over_snr():
  """The identity the weights rest on: ‖v̂ − v‖² = (1 + e^{−λ})‖ε̂ − ε‖² for x̂ from ε̂."""
  rng = np.random.default_rng(0)
  lam = rng.uniform(-8, 8, 16)
  x, eps, eps_hat = rng.normal(size=(3, 16, 5))
  a, s = np.sqrt(1 / (1 + np.exp(-lam)))[:, None], np.sqrt(1 / (1 + np.exp(lam)))[:, None]
  z = a * x + s * eps
  x_hat = (z - s * eps_hat) / a
  v, v_hat = a * eps - s * x, a * eps_hat - s * x_hat
  np.testing.assert_allclose(((v_hat - v) ** 2).sum(1),
                             (1 + np.exp(-lam)) * ((eps_hat - eps) ** 2).sum(1), rtol=1e-9)


def _cosine_moments64(lo, hi):
  """Mean and variance of λ(u), u ~ U[0, 1], by quadrature of the float64 schedule."""
  u = (np.arange(200_000) + 0.5) / 200_000
  b = np.arctan(np.exp(-hi / 2))
  a = np.arctan(np.exp(-lo / 2)) - b
  lam = -2 * np.log(np.tan(a * u + b))
  return lam.mean(), lam.var()


@pytest.mark.parametrize('kind,lo,hi', [('cosine', -20.0, 20.0), ('cosine', -10.0, 15.0),
                                        ('normal', -30.0, 30.0), ('logistic', -40.0, 40.0)])
def test_training_logsnr_moments(kind, lo, hi):
  n = 200_000
  lam = np.asarray(diffusion.sample_training_logsnr(
      jax.random.key(1), (n,), kind=kind, logsnr_min=lo, logsnr_max=hi, mean=1.5, std=2.0),
      np.float64)
  mean, var = _cosine_moments64(lo, hi) if kind == 'cosine' else (1.5, 4.0)
  assert lam.min() >= lo and lam.max() <= hi
  np.testing.assert_allclose(lam.mean(), mean, atol=5 * np.sqrt(var / n))
  # Var of the sample variance ≈ (μ4 − σ⁴)/n; 5 standard errors with μ4 ≤ 9σ⁴ (heavy tails).
  np.testing.assert_allclose(lam.var(), var, atol=5 * np.sqrt(8 * var ** 2 / n))


def test_normal_training_logsnr_is_clipped_to_the_range():
  lam = np.asarray(diffusion.sample_training_logsnr(
      jax.random.key(2), (10_000,), kind='normal', logsnr_min=-1.0, logsnr_max=1.0, mean=0.0,
      std=5.0))
  assert lam.min() == -1.0 and lam.max() == 1.0


def test_power_ema_weights_steps_like_t_to_the_gamma():
  """EDM2: β_t = (1 − 1/t)^{γ+1} averages parameter t with weight ∝ t^γ (up to O(1/t))."""
  gamma, T = 6.94, 2000
  decays = np.asarray(objective.ema_decay(jnp.arange(T), 0.999, power=gamma), np.float64)
  t = np.arange(1, T + 1, dtype=np.float64)
  np.testing.assert_allclose(decays, (1 - 1 / t) ** (gamma + 1), rtol=1e-5)
  assert decays[0] == 0.0                       # the first average is the first parameter
  weights = np.zeros(T)                         # weight of step s in the final average
  for s in range(T):
    weights[s] = (1 - decays[s]) * np.prod(decays[s + 1:])
  want = t ** gamma / np.sum(t ** gamma)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-9)
  np.testing.assert_allclose(weights[T // 10:], want[T // 10:], rtol=0.05)


def test_constant_ema_keeps_its_warm_up():
  steps = np.array([0, 10, 100, 10_000])
  np.testing.assert_allclose(objective.ema_decay(steps, 0.999),
                             np.minimum(0.999, (1 + steps) / (10 + steps)), rtol=1e-6)


def test_cosine_learning_rate_warms_up_then_decays_to_zero():
  config = tiny_config(num_steps=100, warmup_steps=10, learning_rate=1e-3, lr_schedule='cosine')
  _, schedule = objective.make_optimizer(config.train)
  steps = np.arange(101)
  got = np.asarray(jax.vmap(schedule)(steps), np.float64)
  want = np.where(steps < 10, 1e-3 * steps / 10,
                  1e-3 * 0.5 * (1 + np.cos(np.pi * (steps - 10) / 90)))
  np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize('b2', [0.999, 0.99])
def test_adam_b2_matches_float64_adam(b2):
  config = tiny_config(num_steps=10, warmup_steps=0, learning_rate=1e-2, adam_b2=b2, grad_clip=1e9)
  tx, _ = objective.make_optimizer(config.train)
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(5, 7)) * np.array([[1.0], [0.1], [3.0], [0.01], [1.0]])
  param, m, v = np.zeros(7), np.zeros(7), np.zeros(7)
  state, p32 = tx.init(jnp.zeros(7)), jnp.zeros(7)
  for t, g in enumerate(grads, start=1):                # Kingma & Ba's Algorithm 1, float64
    m, v = 0.9 * m + 0.1 * g, b2 * v + (1 - b2) * g ** 2
    lr = 0.0 if t == 1 else 1e-2                        # the shortest warm-up: one step at 0
    param = param - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p32)
    p32 = p32 + updates
  np.testing.assert_allclose(np.asarray(p32, np.float64), param, rtol=1e-4, atol=1e-7)


def _grid(kind, steps, lo, hi, rho=7.0):
  return np.asarray(sampling.logsnr_grid(jnp.arange(steps), jnp.asarray(steps), grid=kind,
                                         logsnr_min=lo, logsnr_max=hi, rho=rho), np.float64)


@pytest.mark.parametrize('kind', sampling.GRIDS)
@pytest.mark.parametrize('steps', [2, 8, 24])
def test_grids_run_from_lambda_min_to_lambda_max_and_increase(kind, steps):
  lam = _grid(kind, steps, -17.0, 12.0)
  np.testing.assert_allclose([lam[0], lam[-1]], [-17.0, 12.0], atol=2e-4)
  assert np.all(np.diff(lam) > 0)


def test_grids_match_float64_formulas():
  n, lo, hi, rho = 12, -2 * np.log(80.0), -2 * np.log(0.002), 7.0
  i = np.arange(n) / (n - 1)
  s_max, s_min = 80.0, 0.002                        # EDM's own σ range and its ρ rule
  sigma = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
  np.testing.assert_allclose(_grid('edm', n, lo, hi), -2 * np.log(sigma), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(_grid('logsnr', n, lo, hi), lo + i * (hi - lo), atol=1e-4)
  b = np.arctan(np.exp(-hi / 2))
  a = np.arctan(np.exp(-lo / 2)) - b
  np.testing.assert_allclose(_grid('cosine', n, lo, hi), -2 * np.log(np.tan(a * (1 - i) + b)),
                             rtol=1e-5, atol=1e-4)


def _linear_eps(z, logsnr, labels):
  """Exact ε for data N(0.3·label, 0.25 I): finite everywhere, cheap."""
  alpha, sigma = diffusion.alpha_sigma(logsnr)
  mu = 0.3 * labels.astype(jnp.float32)[:, None]
  return sigma[:, None] * (z - alpha[:, None] * mu) / (alpha[:, None] ** 2 * 0.25 + sigma[:, None] ** 2)


@pytest.mark.parametrize('method', sampling.METHODS)
@pytest.mark.parametrize('grid', sampling.GRIDS)
def test_sampler_never_computes_a_nan_even_where_it_is_discarded(method, grid):
  with jax.debug_nans(True):
    x = sampling.sample(_linear_eps, jnp.array([0, 1, 2]), jnp.array([0.0, 1.0, 4.0]),
                        jax.random.key(0), shape=(2,), null_label=3, steps=6, method=method,
                        grid=grid, clip=False)
  assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize('step', ['ancestral', 'ddim', 'dpmpp2m'])
def test_step_functions_take_one_lambda_per_example(step):
  """A batch with a different λ per row equals each row stepped alone with its scalar λ."""
  rng = np.random.default_rng(0)
  z, x, x_prev, noise = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(4))
  lam_prev, lam, lam_next = (jnp.asarray(a, jnp.float32) for a in
                             ([-6, -3, 0, 2], [-5, -1, 1, 4], [-3, 1, 2.5, 7]))
  f = {'ancestral': lambda i: sampling.ancestral_step(z[i], x[i], lam[i], lam_next[i], noise[i], 0.3),
       'ddim': lambda i: sampling.ddim_step(z[i], x[i], lam[i], lam_next[i]),
       'dpmpp2m': lambda i: sampling.dpmpp2m_step(z[i], x[i], x_prev[i], lam_prev[i], lam[i],
                                                  lam_next[i], False)}[step]
  rows = slice(None)
  batched = f(rows)
  for i in range(4):
    np.testing.assert_allclose(batched[i], f(i), rtol=1e-6, atol=1e-6)
