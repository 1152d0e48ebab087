"""Guided sampling (Algorithm 2 and friends) against closed forms, and its compiled structure."""
import functools

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion, guidance, inference, model as model_lib, sampling, sharding
from conftest import tiny_config

# --- Gaussian data: exact ε for each class and for the mixture -------------------------------


def gaussian_eps(z, logsnr, mean, std):
  """E[ε | z_λ] for data N(mean, std² I): σ (z − α μ) / (α² s² + σ²)."""
  alpha, sigma = diffusion.alpha_sigma(logsnr)
  alpha, sigma = alpha[:, None], sigma[:, None]
  return sigma * (z - alpha * mean) / (alpha ** 2 * std ** 2 + sigma ** 2)


def mixture_eps_fn(means, std):
  """Class c: N(means[c], std²); the null label len(means): the equal-weight mixture."""
  means = jnp.asarray(means, jnp.float32)
  k = means.shape[0]

  def eps_fn(z, logsnr, labels):
    alpha, sigma = diffusion.alpha_sigma(logsnr)
    var = alpha ** 2 * std ** 2 + sigma ** 2
    per_class = jax.vmap(lambda m: gaussian_eps(z, logsnr, m, std))(means)        # (K, B, D)
    logp = -0.5 * jnp.sum((z[None] - alpha[None, :, None] * means[:, None]) ** 2, -1) / var
    post = jax.nn.softmax(logp, axis=0)                                             # p(c | z)
    uncond = jnp.sum(post[..., None] * per_class, 0)
    cond = per_class[jnp.minimum(labels, k - 1), jnp.arange(z.shape[0])]
    return jnp.where((labels == k)[:, None], uncond, cond)
  return eps_fn


MEANS, STD = [[-0.5, 0.2], [0.4, -0.3], [0.0, 0.6]], 0.3


def _jitted(method):
  return jax.jit(functools.partial(sampling.sample, mixture_eps_fn(MEANS, STD), shape=(2,),
                                   null_label=3, method=method, clip=False))


@pytest.mark.parametrize('method,steps', [('ancestral', 256), ('ddim', 256), ('dpmpp2m', 64)])
def test_w0_reproduces_class_mean_and_variance(method, steps):
  n = 4000
  for c in (0, 2):
    x = np.asarray(_jitted(method)(jnp.full((n,), c), jnp.zeros(n), jax.random.key(c), steps=steps))
    se_mean, se_std = STD / np.sqrt(n), STD / np.sqrt(2 * n)
    np.testing.assert_allclose(x.mean(0), MEANS[c], atol=4.5 * se_mean)
    np.testing.assert_allclose(x.std(0), STD, atol=4.5 * se_std + 0.005 * STD)


def _algorithm2_float64(steps, w, v, mu_c, s_c, mu_u, s_u):
  """Exact mean and variance of Algorithm 2's output for linear-Gaussian ε, in float64."""
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  lam = -2 * np.log(np.tan(a * (1 - np.arange(steps) / (steps - 1)) + b))
  sig = lambda t: 1 / (1 + np.exp(-t))
  m, var = 0.0, 1.0
  for t in range(steps):
    al, s2 = np.sqrt(sig(lam[t])), sig(-lam[t])
    coef = lambda mu, s: (np.sqrt(s2) / (al ** 2 * s ** 2 + s2), -np.sqrt(s2) * al * mu / (al ** 2 * s ** 2 + s2))
    (ac, bc), (au, bu) = coef(mu_c, s_c), coef(mu_u, s_u)
    A, B = (1 + w) * ac - w * au, (1 + w) * bc - w * bu          # ε̃ = A z + B
    P, Q = (1 - np.sqrt(s2) * A) / al, -np.sqrt(s2) * B / al     # x̃ = P z + Q
    if t == steps - 1:
      return P * m + Q, P ** 2 * var
    al_n, s2_n = np.sqrt(sig(lam[t + 1])), sig(-lam[t + 1])
    r = np.exp(lam[t] - lam[t + 1])
    M = r * al_n / al + (1 - r) * al_n * P                       # z' = M z + N + std·n
    N = (1 - r) * al_n * Q
    noise_var = ((1 - r) * s2_n) ** (1 - v) * ((1 - r) * s2) ** v
    m, var = M * m + N, M ** 2 * var + noise_var


@pytest.mark.parametrize('w', [0.0, 1.5])
def test_ancestral_few_steps_matches_float64_algorithm2(w):
  steps, v, n, d = 6, 0.3, 20_000, 4
  mu_c, s_c, mu_u, s_u = 0.5, 0.2, -0.3, 0.6

  def eps_fn(z, logsnr, labels):
    cond = (labels == 0)[:, None]
    return jnp.where(cond, gaussian_eps(z, logsnr, mu_c, s_c), gaussian_eps(z, logsnr, mu_u, s_u))

  x = np.asarray(jax.jit(functools.partial(
      sampling.sample, eps_fn, shape=(d,), null_label=1, steps=steps, v=v, clip=False))(
          jnp.zeros(n, jnp.int32), jnp.full((n,), w), jax.random.key(7))).ravel()
  mean, var = _algorithm2_float64(steps, w, v, mu_c, s_c, mu_u, s_u)
  assert abs(var - s_c ** 2) > 0.002        # few steps: visibly not the data variance...
  m_eff = n * d
  assert abs(x.mean() - mean) < 5 * np.sqrt(var / m_eff)
  assert abs(x.var() - var) < 5 * var * np.sqrt(2 / m_eff)   # ...but exactly Algorithm 2's


def test_guidance_moves_samples_away_from_other_classes():
  n, means = 4000, [[-1.0], [1.0]]
  f = jax.jit(functools.partial(sampling.sample, mixture_eps_fn(means, 0.5), shape=(1,),
                                null_label=2, steps=64, method='ancestral', clip=False))
  labels = jnp.zeros(n, jnp.int32)
  x0 = np.asarray(f(labels, jnp.zeros(n), jax.random.key(0)))[:, 0]
  x4 = np.asarray(f(labels, jnp.full((n,), 4.0), jax.random.key(0)))[:, 0]
  # Implicit classifier p(c|z)^w: samples of class 0 move away from class 1 (at +1).
  assert x4.mean() < x0.mean() - 0.1
  assert np.mean(x4 > 0) < 0.5 * np.mean(x0 > 0)
  assert np.mean(x0 > 0) > 0.005            # the overlap was there to remove


@pytest.mark.parametrize('method', ['ancestral', 'dpmpp2m'])
def test_unguided_path_equals_guidance_w0(method):
  """w = None (B rows) gives the samples of w = 0 (2B rows): the sweep's shortcut at w = 0."""
  labels, key = jnp.arange(12) % 3, jax.random.key(5)
  x_none = _jitted(method)(labels, None, key, steps=16)
  x_w0 = _jitted(method)(labels, jnp.zeros(12), key, steps=16)
  np.testing.assert_allclose(x_none, x_w0, atol=1e-5)
  assert np.abs(np.asarray(x_none)).max() > 0.1


# --- One network call per step, no collectives, no recompiles --------------------------------


def test_one_network_call_per_step_with_2b_rows():
  calls = []

  def eps_fn(z, logsnr, labels):
    calls.append(z.shape[0])
    return jnp.zeros_like(z)

  b = 3
  for w, rows in [(jnp.ones(b), 2 * b), (None, b)]:
    calls.clear()
    jax.make_jaxpr(lambda w, steps: sampling.sample(
        eps_fn, jnp.arange(b), w, jax.random.key(0), shape=(4,), null_label=9, steps=steps))(w, 10)
    # One call inside the loop body (run steps − 1 times) and one for the final x̃.
    assert calls == [rows, rows]


def test_guided_pairs_are_interleaved():
  seen = {}

  def eps_fn(z, logsnr, labels):
    seen['labels'] = labels
    return jnp.zeros_like(z)

  sampling.sample(eps_fn, jnp.array([4, 7, 2]), 1.0, jax.random.key(0), shape=(1,),
                  null_label=10, steps=2)
  np.testing.assert_array_equal(seen['labels'], [4, 10, 7, 10, 2, 10])


@pytest.fixture(scope='module')
def pipes():
  """The tiny U-Net with random (non-zero) parameters, on 8 devices and on 1."""
  config = tiny_config()
  model = model_lib.from_config(config)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)),
                               jnp.zeros((1,), jnp.int32))['params']
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape), params)
  mk = lambda devices: inference.Pipeline(config, params, sharding.make_mesh({'data': -1}, devices),
                                          model=model)
  return mk(jax.devices()), mk(jax.devices()[:1])


def test_guided_sampler_has_no_cross_device_collectives(pipes):
  pipe = pipes[0]
  assert pipe.mesh.size == 8
  batch = sharding.batch_sharding(pipe.mesh)
  put = lambda a: jax.device_put(a, batch)
  lowered = pipe.sample_batch.lower(
      pipe.params, put(np.arange(16, dtype=np.int32) % 10),
      guidance.Guidance(w=put(np.ones(16, np.float32))), put(np.arange(16)), jax.random.key(0),
      4, 0.3, (np.float32(-20), np.float32(20)), np.float32(7), method='ancestral', clip=True,
      grid='cosine')
  hlo = lowered.compile().as_text()
  for op in ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute', 'reduce-scatter'):
    assert op not in hlo, op
  assert 'fusion' in hlo   # sanity: we did read the optimised program


def test_sweep_over_w_seed_steps_does_not_recompile(pipes):
  pipe = pipes[0]
  labels = np.arange(16) % 10
  pipe.sample(labels, np.zeros(16), steps=3, seed=0, batch_size=16)   # compile once
  compiles = []
  listener = lambda name, *a, **k: compiles.append(name) if name.endswith('backend_compile_duration') else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for i, w in enumerate(np.linspace(-1, 4, 10)):
      pipe.sample((labels + i) % 10, np.full(16, w), steps=3 + i % 3, seed=i, batch_size=16)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []


def test_same_seed_same_samples_across_batch_sizes_and_devices(pipes):
  eight, one = pipes
  labels, w = np.arange(10), np.linspace(0, 3, 10)
  ref = eight.sample(labels, w, steps=4, seed=3, batch_size=16)
  # One device, chunks of 5 instead of one padded chunk of 16 over 8 devices.
  np.testing.assert_allclose(one.sample(labels, w, steps=4, seed=3, batch_size=5), ref, atol=2e-5)
  assert not np.allclose(eight.sample(labels, w, steps=4, seed=4, batch_size=16), ref, atol=1e-3)
