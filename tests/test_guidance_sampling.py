"""Guidance variants inside the samplers: limits that must hold exactly, the network's row count
per step under a guidance interval (counted at run time), CFG++ against a float64 step, and one
compiled program for a sweep over any parameter."""
import functools

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion, sampling
from cfg_jax.guidance import Guidance

B, NULL = 4, 3
LABELS = jnp.array([0, 1, 2, 1])
W = jnp.array([0.0, 0.5, 1.0, 3.0])


def linear_eps(z, logsnr, labels):
  """Exact ε for data N(μ_c, 0.25 I) and, for ∅, N(0, I): guidance moves the mean and the scale."""
  alpha, sigma = (a[:, None] for a in diffusion.alpha_sigma(logsnr))
  null = (labels == NULL)[:, None]
  mu = jnp.where(null, 0.0, 0.3 * labels.astype(jnp.float32)[:, None] - 0.2)
  var = jnp.where(null, 1.0, 0.25)
  return sigma * (z - alpha * mu) / (alpha ** 2 * var + sigma ** 2)


def run(w, method='ddim', steps=8, eps_fn=linear_eps, grid='logsnr', clip=False):
  return np.asarray(sampling.sample(eps_fn, LABELS, w, jax.random.key(0), shape=(3,),
                                    null_label=NULL, steps=steps, method=method, grid=grid,
                                    logsnr_min=-8.0, logsnr_max=8.0, clip=clip))


@pytest.mark.parametrize('method', sampling.METHODS)
def test_identity_limits_equal_the_papers_rule(method):
  plain = run(W, method)
  limits = [Guidance(w=W, interval=(-jnp.inf, jnp.inf)),
            Guidance(w=W, rescale=0.0),
            Guidance(w=W, rule='apg', apg_eta=1.0, apg_momentum=0.0, apg_norm=jnp.inf)]
  for g in limits:
    np.testing.assert_allclose(run(g, method), plain, rtol=1e-5, atol=1e-5)
  assert np.abs(plain - run(None, method)).max() > 1e-2   # guidance does move the samples


@pytest.mark.parametrize('method', sampling.METHODS)
def test_empty_interval_is_the_unguided_b_row_path(method):
  g = Guidance(w=W, interval=(jnp.full(B, 50.0), jnp.full(B, 60.0)))
  # Equal up to float32 rounding: the two compiled programs may fuse the same math differently.
  np.testing.assert_allclose(run(g, method), run(None, method), rtol=1e-6, atol=1e-6)


def test_network_runs_b_rows_outside_the_interval_and_2b_inside():
  rows = []

  def counting_eps(z, logsnr, labels):
    jax.debug.callback(lambda n: rows.append(int(n)), z.shape[0])
    return linear_eps(z, logsnr, labels)

  steps = 9   # uniform λ grid over [−8, 8]: −8, −6, …, 8
  lo = jnp.array([-3.0, -1.0, -10.0, 0.5])   # one example inside from λ = −2 … per its bounds
  hi = jnp.array([1.0, 2.5, -7.0, 4.5])
  g = Guidance(w=W, interval=(lo, hi))
  jax.block_until_ready(sampling.sample(counting_eps, LABELS, g, jax.random.key(0), shape=(3,),
                                        null_label=NULL, steps=steps, method='ddim',
                                        grid='logsnr', logsnr_min=-8.0, logsnr_max=8.0))
  lam = np.linspace(-8, 8, steps)
  inside_any = [bool(np.any((l >= np.asarray(lo)) & (l <= np.asarray(hi)))) for l in lam]
  assert rows == [2 * B if i else B for i in inside_any]
  assert 0 < sum(inside_any) < steps


def test_cfgpp_ddim_matches_a_float64_step():
  """Two-step DDIM with CFG++: z₁ = α₁ x̂_g + σ₁ ε_u at λ₁, then the guided x̂ at λ₁."""
  z0 = np.asarray(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (3,)))(
      jax.vmap(functools.partial(jax.random.fold_in, jax.random.key(0)))(jnp.arange(B))),
      np.float64)
  lam0, lam1 = -8.0, 8.0
  sig = lambda t: 1 / (1 + np.exp(-t))
  mu = np.where(np.asarray(LABELS) == NULL, 0.0, 0.3 * np.asarray(LABELS) - 0.2)[:, None]
  w = np.asarray(W, np.float64)[:, None]

  def guided(z, lam):
    a, s = np.sqrt(sig(lam)), np.sqrt(sig(-lam))
    eps = lambda m, var: s * (z - a * m) / (a ** 2 * var + s ** 2)
    e_c, e_u = eps(mu, 0.25), eps(0.0, 1.0)
    x_c, x_u = (z - s * e_c) / a, (z - s * e_u) / a
    return (1 + w) * x_c - w * x_u, e_u

  x0, e_u0 = guided(z0, lam0)
  z1 = np.sqrt(sig(lam1)) * x0 + np.sqrt(sig(-lam1)) * e_u0
  want, _ = guided(z1, lam1)
  got = run(Guidance(w=W, rule='cfgpp'), 'ddim', steps=2)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('method', sampling.METHODS)
@pytest.mark.parametrize('g', [
    Guidance(w=W, interval=(-2.0, 4.0)), Guidance(w=W, rescale=0.7),
    Guidance(w=W + 4.0, threshold=0.995), Guidance(w=W, rule='apg', apg_norm=2.0),
    Guidance(w=W, rule='cfgpp'), Guidance(w=W, schedule='linear'),
    Guidance(w=W, schedule='cosine'),
    Guidance(w=W, schedule='table', table=(jnp.array([-8.0, 8.0]), jnp.array([2.0, 0.0]))),
    Guidance(w=W, rule='apg', interval=(-2.0, 4.0), rescale=0.5, threshold=0.99)],
    ids=['interval', 'rescale', 'threshold', 'apg', 'cfgpp', 'linear', 'cosine', 'table', 'mixed'])
def test_every_sampler_takes_every_rule(method, g):
  x, plain = run(g, method), run(g.w, method)
  assert np.all(np.isfinite(x))
  assert np.abs(x - plain).max() > 1e-4   # the rule changed something
  if g.threshold is not None:
    assert np.abs(x).max() <= 1.0 + 1e-6


def test_a_sweep_over_any_rule_parameter_compiles_once():
  f = jax.jit(functools.partial(sampling.sample, linear_eps, shape=(3,), null_label=NULL,
                                steps=6, method='dpmpp2m', grid='logsnr'))
  make = lambda i: Guidance(w=W + i, interval=(jnp.full(B, -3.0 + i), jnp.full(B, 4.0)),
                            rescale=jnp.full(B, 0.1 * i), threshold=jnp.full(B, 0.9 + 0.01 * i),
                            rule='apg', apg_eta=jnp.full(B, 0.1 * i),
                            apg_norm=jnp.full(B, 1.0 + i), apg_momentum=jnp.full(B, -0.1 * i))
  f(LABELS, make(0), jax.random.key(0)).block_until_ready()
  compiles = []
  listener = lambda name, *a, **k: compiles.append(name) if name.endswith('backend_compile_duration') else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for i in range(1, 6):
      f(LABELS, make(i), jax.random.key(i)).block_until_ready()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
