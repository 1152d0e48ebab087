"""Guided samplers (paper Algorithm 2, DDIM, DPM-Solver++(2M)) for any ε-prediction function.

`sample(eps_fn, labels, w, rng, ...)` runs the whole loop inside one `lax.fori_loop`. The step
count, w (and every guidance parameter), labels and seed are traced values, so one compiled
program serves them all; only `shape`, `method`, `clip`, the grid and which guidance pieces are
on (`guidance.Guidance`) are static.

One network call per step: each example's conditional and null copies are interleaved
(rows 2i and 2i + 1 of a 2B batch), so a batch sharded over devices keeps each pair on one
device and guidance needs no communication. The condition may be any pytree of (B, ...) leaves
(class labels, tokens, embeddings: cfg_jax.conditioning); its null (∅, or a negative prompt)
has the same structure and is paired leaf by leaf. With `w=None` only the B conditional rows
run, and with a guidance interval so do the steps where no example of the batch is inside it
(that decision, `any` over a batch sharded across devices, is the one collective: a boolean per
step).
"""
import functools

import jax
import jax.numpy as jnp

from cfg_jax import diffusion, guidance

METHODS = ('ancestral', 'ddim', 'dpmpp2m')


GRIDS = ('cosine', 'logsnr', 'edm')


def logsnr_grid(t, steps, *, grid='cosine', logsnr_min=diffusion.LOGSNR_MIN,
                logsnr_max=diffusion.LOGSNR_MAX, rho=7.0):
  """λ_t for t = 0 … steps − 1: t = 0 is λ_min (noise), t = steps − 1 is λ_max (clean).

  'cosine' (paper): uniformly spaced u through the training schedule λ(u). 'logsnr': uniform in
  λ. 'edm': Karras et al.'s ρ-spacing of σ = e^{−λ/2} (their σ is σ_λ/α_λ):
  σ_t = (σ_max^{1/ρ} + t/(steps − 1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
  """
  frac = t / jnp.maximum(steps - 1, 1).astype(jnp.float32)
  if grid == 'cosine':
    return diffusion.logsnr_schedule(1.0 - frac, logsnr_min, logsnr_max)
  if grid == 'logsnr':
    return logsnr_min + frac * (logsnr_max - logsnr_min)
  if grid == 'edm':   # in log space: ln σ^{1/ρ} = −λ/(2ρ)
    root_max, root_min = jnp.exp(-logsnr_min / (2 * rho)), jnp.exp(-logsnr_max / (2 * rho))
    return -2.0 * rho * jnp.log(root_max + frac * (root_min - root_max))
  raise ValueError(f'unknown time grid {grid!r}; choose one of {", ".join(GRIDS)}')


# --- Pure update rules: (z_t, x̃_t) at λ_t → z at the cleaner λ_next ----------------------------

# Every λ is one value per example, shape (B,), broadcast against z by diffusion.bcast.

def ancestral_step(z, x, logsnr, logsnr_next, noise, v):
  """z ~ N(μ̃(z, x̃), (σ̃²)^(1−v) (σ²_{λ|λ′})^v): Algorithm 2's update."""
  mean, log_var_post = diffusion.posterior(z, x, logsnr, logsnr_next)
  log_var = (1.0 - v) * log_var_post + v * diffusion.forward_log_var(logsnr, logsnr_next)
  return mean + diffusion.bcast(jnp.exp(0.5 * log_var), z) * noise


def ddim_step(z, x, logsnr, logsnr_next):
  """Deterministic DDIM (η = 0): keep ε̂, move x̂ to the next noise level."""
  eps = diffusion.predict_eps(z, x, logsnr)
  return diffusion.diffuse(x, logsnr_next, eps)


def dpmpp2m_step(z, x, x_prev, logsnr_prev, logsnr, logsnr_next, first_order):
  """DPM-Solver++(2M) in data prediction (Lu et al. 2022); half-log-SNR steps h.

  `first_order` (a traced bool) falls back to the DDIM-like first-order update; the sampler
  uses it for the first step (no history) and the last (the long jump to λ_max, where the
  second-order extrapolation with a short previous step is unstable: "lower order final").
  """
  _, sigma = diffusion.alpha_sigma(logsnr)
  alpha_next, sigma_next = diffusion.alpha_sigma(logsnr_next)
  h = 0.5 * (logsnr_next - logsnr)
  r = jnp.where(first_order, 1.0, 0.5 * (logsnr - logsnr_prev) / h)  # no 0/0 without history
  c = diffusion.bcast(0.5 / r, x)
  d = jnp.where(first_order, x, (1.0 + c) * x - c * x_prev)
  return (diffusion.bcast(sigma_next / sigma, z) * z
          - diffusion.bcast(alpha_next * jnp.expm1(-h), d) * d)


# --- The loop --------------------------------------------------------------------------------

def _noise(keys, t, shape):
  """Per-sample N(0, I) draws: sample i's stream is keyed by its own key, step t."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), shape))(keys)


def interleave(cond, null):
  """(cond_0, null_0, cond_1, null_1, …): every leaf of `cond` (B, ...) with the matching leaf
  of `null` (the same shape, or anything that broadcasts to it), as 2B rows."""
  def pair(c, n):
    n = jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)
    return jnp.stack([c, n], 1).reshape((2 * c.shape[0],) + c.shape[1:])
  return jax.tree.map(pair, cond, null)


def _as_condition(labels):
  """Labels (any array-like of ints) as int32; a dict of condition kinds as arrays."""
  if isinstance(labels, dict):
    return jax.tree.map(jnp.asarray, labels)
  return jnp.asarray(labels, jnp.int32)


def sample(eps_fn, labels, w, rng, *, shape, null_label, steps, method='ancestral', v=0.3,
           clip=True, indices=None, grid='cosine', logsnr_min=diffusion.LOGSNR_MIN,
           logsnr_max=diffusion.LOGSNR_MAX, rho=7.0):
  """Draws one sample per label; returns x̃ at the grid's last λ, shape (B, *shape), float32.

  eps_fn(z, logsnr, labels) -> ε for a batch (any jittable denoiser). labels: (B,) class labels,
  or any condition pytree of (B, ...) leaves (cfg_jax.conditioning); `null_label`: what the
  guided rule pairs them with, ∅ (the label eps_fn treats as null) or a negative condition: a
  pytree like `labels`, its leaves (B, ...) per example or broadcasting to that.
  w: (B,) or scalar guidance strength (the paper's rule), a `guidance.Guidance` (variants), or
  None for no guidance (one B-row network call per step).
  rng: a key; sample i's noise comes from fold_in(rng, index_i), index_i = indices[i]
  (default i), so samples do not depend on batch size or devices.
  grid, logsnr_min, logsnr_max, rho: the time grid (`logsnr_grid`); the paper's is 'cosine'
  over [−20, 20].
  """
  if method not in METHODS:
    raise ValueError(f'unknown sampler {method!r}; choose one of {", ".join(METHODS)}')
  if grid not in GRIDS:
    raise ValueError(f'unknown time grid {grid!r}; choose one of {", ".join(GRIDS)}')
  labels = _as_condition(labels)
  b = jax.tree.leaves(labels)[0].shape[0]
  indices = jnp.arange(b) if indices is None else indices
  keys = jax.vmap(functools.partial(jax.random.fold_in, rng))(indices)
  g = guidance.as_guidance(w)
  g = None if g is None else g.per_example(b)
  pair_labels = interleave(labels, null_label)
  lam = lambda t: jnp.full((b,), logsnr_grid(t, jnp.asarray(steps), grid=grid, rho=rho,
                                             logsnr_min=logsnr_min, logsnr_max=logsnr_max))

  def predictions(z, logsnr):
    """(ε_c, ε_u) from one network call on interleaved pairs (2B rows)."""
    pairs = jnp.stack([z, z], 1).reshape((2 * b,) + z.shape[1:])
    eps = eps_fn(pairs, jnp.repeat(logsnr, 2), pair_labels).reshape((b, 2) + z.shape[1:])
    return eps[:, 0], eps[:, 1]

  def conditional_only(z, logsnr):
    """(ε_c, ε_c) from B rows: where no example guides, the null rows are not computed."""
    eps = eps_fn(z, logsnr, labels)
    return eps, eps

  def denoise(z, logsnr, state):
    """x̃ from one network call, and the point z̃ the step continues from (z but for CFG++)."""
    if g is None:
      eps_c = eps_u = eps_fn(z, logsnr, labels)
    elif g.interval is None:
      eps_c, eps_u = predictions(z, logsnr)
    else:
      eps_c, eps_u = jax.lax.cond(jnp.any(g.inside(logsnr)), predictions, conditional_only,
                                  z, logsnr)
    x = x_c = diffusion.predict_x(z, eps_c, logsnr)
    if g is not None:
      alpha, sigma = (diffusion.bcast(a, z) for a in diffusion.alpha_sigma(logsnr))
      x, z, state = g.combine(z, x_c, diffusion.predict_x(z, eps_u, logsnr), eps_u, logsnr,
                              g.effective_w(logsnr, logsnr_min, logsnr_max), state,
                              alpha=alpha, sigma=sigma)
    return (jnp.clip(x, -1.0, 1.0) if clip else x), z, state

  def body(t, carry):
    z, x_prev, logsnr_prev, logsnr, state = carry   # λ_prev is only read after the first step
    logsnr_next = lam(t + 1)
    x, z, state = denoise(z, logsnr, state)
    if method == 'ancestral':
      z = ancestral_step(z, x, logsnr, logsnr_next, _noise(keys, t + 1, shape), v)
    elif method == 'ddim':
      z = ddim_step(z, x, logsnr, logsnr_next)
    else:
      z = dpmpp2m_step(z, x, x_prev, logsnr_prev, logsnr, logsnr_next,
                       (t == 0) | (t == steps - 2))
    return z, x, logsnr, logsnr_next, state

  z = _noise(keys, 0, shape)
  start = lam(0)
  state = () if g is None else g.init_state(z)
  z, _, _, logsnr, state = jax.lax.fori_loop(0, steps - 1, body,
                                             (z, jnp.zeros_like(z), start, start, state))
  return denoise(z, logsnr, state)[0]
