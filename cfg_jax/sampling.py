"""Guided samplers (paper Algorithm 2, DDIM, DPM-Solver++(2M)) for any ε-prediction function.

`sample(eps_fn, labels, w, rng, ...)` runs the whole loop inside one `lax.fori_loop`. The step
count, w, labels and seed are traced values, so one compiled program serves them all; only
`shape`, `method`, `clip`, the rule and whether guidance is on are static.

One network call per step: each example's conditional and null-label copies are interleaved
(rows 2i and 2i + 1 of a 2B batch), so a batch sharded over devices keeps each pair on one
device and guidance needs no communication. With `w=None` only the B conditional rows run.
"""
import functools

import jax
import jax.numpy as jnp

from cfg_jax import diffusion, guidance

METHODS = ('ancestral', 'ddim', 'dpmpp2m')


def logsnr_grid(t, steps, logsnr_min=diffusion.LOGSNR_MIN, logsnr_max=diffusion.LOGSNR_MAX):
  """λ_t at uniformly spaced u: t = 0 is λ_min (noise), t = steps − 1 is λ_max."""
  u = 1.0 - t / jnp.maximum(steps - 1, 1).astype(jnp.float32)
  return diffusion.logsnr_schedule(u, logsnr_min, logsnr_max)


# --- Pure update rules: (z_t, x̃_t) at λ_t → z at the cleaner λ_next ----------------------------

def ancestral_step(z, x, logsnr, logsnr_next, noise, v):
  """z ~ N(μ̃(z, x̃), (σ̃²)^(1−v) (σ²_{λ|λ′})^v): Algorithm 2's update."""
  mean, log_var_post = diffusion.posterior(z, x, logsnr, logsnr_next)
  log_var = (1.0 - v) * log_var_post + v * diffusion.forward_log_var(logsnr, logsnr_next)
  return mean + jnp.exp(0.5 * log_var) * noise


def ddim_step(z, x, logsnr, logsnr_next):
  """Deterministic DDIM (η = 0): keep ε̂, move x̂ to the next noise level."""
  eps = diffusion.predict_eps(z, x, logsnr)
  alpha, sigma = diffusion.alpha_sigma(logsnr_next)
  return alpha * x + sigma * eps


def dpmpp2m_step(z, x, x_prev, logsnr_prev, logsnr, logsnr_next, first_order):
  """DPM-Solver++(2M) in data prediction (Lu et al. 2022); half-log-SNR steps h.

  `first_order` (a traced bool) falls back to the DDIM-like first-order update; the sampler
  uses it for the first step (no history) and the last (the long jump to λ_max, where the
  second-order extrapolation with a short previous step is unstable: "lower order final").
  """
  _, sigma = diffusion.alpha_sigma(logsnr)
  alpha_next, sigma_next = diffusion.alpha_sigma(logsnr_next)
  h = 0.5 * (logsnr_next - logsnr)
  r = 0.5 * (logsnr - logsnr_prev) / h
  d = jnp.where(first_order, x, (1.0 + 0.5 / r) * x - (0.5 / r) * x_prev)
  return (sigma_next / sigma) * z - alpha_next * jnp.expm1(-h) * d


# --- The loop --------------------------------------------------------------------------------

def _noise(keys, t, shape):
  """Per-sample N(0, I) draws: sample i's stream is keyed by its own key, step t."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), shape))(keys)


def sample(eps_fn, labels, w, rng, *, shape, null_label, steps, method='ancestral', v=0.3,
           clip=True, rule=guidance.classifier_free, indices=None,
           logsnr_min=diffusion.LOGSNR_MIN, logsnr_max=diffusion.LOGSNR_MAX):
  """Draws one sample per label; returns x̃ at λ_max, shape (B, *shape), float32.

  eps_fn(z, logsnr, labels) -> ε for a batch (any jittable denoiser); `null_label` is the
  label it treats as ∅. w: (B,) or scalar guidance strength, or None for no guidance (one
  B-sized network call per step). rng: a key; sample i's noise comes from fold_in(rng, index_i),
  index_i = indices[i] (default i), so samples do not depend on batch size or devices.
  """
  if method not in METHODS:
    raise ValueError(f'unknown sampler {method!r}; choose one of {", ".join(METHODS)}')
  labels = jnp.asarray(labels, jnp.int32)
  b = labels.shape[0]
  indices = jnp.arange(b) if indices is None else indices
  keys = jax.vmap(functools.partial(jax.random.fold_in, rng))(indices)
  guided = w is not None
  if guided:
    w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (b,))
    pair_labels = jnp.stack([labels, jnp.full_like(labels, null_label)], 1).reshape(2 * b)
  grid = functools.partial(logsnr_grid, steps=jnp.asarray(steps), logsnr_min=logsnr_min,
                           logsnr_max=logsnr_max)

  def denoise(z, logsnr):
    """x̃ = (z − σ ε̃)/α with ε̃ from one network call (2B rows when guided)."""
    logsnr_b = jnp.full((b,), logsnr)
    if guided:
      pairs = jnp.stack([z, z], 1).reshape((2 * b,) + z.shape[1:])
      eps = eps_fn(pairs, jnp.repeat(logsnr_b, 2), pair_labels).reshape((b, 2) + z.shape[1:])
      eps = rule(eps[:, 0], eps[:, 1], w, guidance.StepInfo(z, logsnr_b))
    else:
      eps = eps_fn(z, logsnr_b, labels)
    x = diffusion.predict_x(z, eps, logsnr)
    return jnp.clip(x, -1.0, 1.0) if clip else x

  def body(t, carry):
    z, x_prev = carry
    logsnr, logsnr_next = grid(t), grid(t + 1)
    x = denoise(z, logsnr)
    if method == 'ancestral':
      z = ancestral_step(z, x, logsnr, logsnr_next, _noise(keys, t + 1, shape), v)
    elif method == 'ddim':
      z = ddim_step(z, x, logsnr, logsnr_next)
    else:
      z = dpmpp2m_step(z, x, x_prev, grid(t - 1), logsnr, logsnr_next,
                       (t == 0) | (t == steps - 2))
    return z, x

  z = _noise(keys, 0, shape)
  z, _ = jax.lax.fori_loop(0, steps - 1, body, (z, jnp.zeros_like(z)))
  return denoise(z, grid(steps - 1))
