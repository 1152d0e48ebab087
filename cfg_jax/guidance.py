"""Guidance: how the conditional and unconditional predictions combine at each sampling step.

The paper's rule (Algorithm 2) is ε̃ = (1 + w)·ε(z, c) − w·ε(z, ∅). Later variants work on the
denoised prediction D = x̂ (for the paper's rule the two are the same: x̂ is affine in ε at a
fixed z). A `Guidance` holds per-example, traced parameters; which pieces are on is part of its
structure (a static rule name, fields set or None), so a sweep over any parameter is one compiled
program, and switching a piece on or off compiles once more.

Per step, in this order:
  1. w_t = w · schedule(λ) · [λ inside the interval]          (`effective_w`)
  2. D = combine(D_c, D_u, w_t): 'cfg' (paper), 'apg' or 'cfgpp'
  3. CFG rescale (φ), then dynamic thresholding (percentile p)
  4. CFG++ only: the step continues from z̃ = α·D + σ·ε_u (re-noised with the unconditional ε)

Convention: the paper's w. Many codebases write ε_u + s·(ε_c − ε_u) with a "guidance scale"
s = 1 + w; `w_from_scale` converts. w = 0 is the plain conditional model, w < 0 moves toward the
unconditional one; w is never clamped. Every output channel is guided.
"""
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

COMBINE_RULES = ('cfg', 'apg', 'cfgpp')
SCHEDULES = ('constant', 'linear', 'cosine', 'table')


def _per_example(w, x):
  w = jnp.asarray(w, x.dtype)
  return jnp.reshape(w, w.shape + (1,) * (x.ndim - w.ndim))


def _sum(x):
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def classifier_free(eps_cond, eps_uncond, w):
  """ε̃ = (1 + w)·ε(z, c) − w·ε(z, ∅)  (paper, Algorithm 2); the same formula on x̂."""
  w = _per_example(w, eps_cond)
  return (1.0 + w) * eps_cond - w * eps_uncond


def w_from_scale(scale):
  """The paper's w for a "guidance scale" s of the ε_u + s(ε_c − ε_u) convention: w = s − 1."""
  return jnp.asarray(scale) - 1.0


def scale_from_w(w):
  """The "guidance scale" s = 1 + w."""
  return 1.0 + jnp.asarray(w)


# --- The pieces, each a pure function on (B, ...) arrays with (B,) parameters -----------------

def sigma_to_logsnr(sigma):
  """EDM's noise level σ (noise-to-signal ratio σ_λ/α_λ = e^{−λ/2}) as λ = −2 ln σ.

  An interval σ ∈ (σ_lo, σ_hi] is λ ∈ [−2 ln σ_hi, −2 ln σ_lo).
  """
  return -2.0 * jnp.log(jnp.asarray(sigma, jnp.float32))


def apg(d_cond, d_uncond, w, *, eta, norm_threshold, momentum, running):
  """Adaptive projected guidance (Sadat et al. 2024) on denoised predictions.

  Δ = D_c − D_u, averaged with momentum β (Δ̄ = Δ + β·Δ̄_prev; β < 0 is their "reverse"
  momentum), clipped to norm r, split into parts parallel and orthogonal to D_c:
  D = D_c + w·(Δ⊥ + η·Δ∥). Returns (D, new Δ̄). η = 1, β = 0, r = ∞ is the paper's rule.
  """
  running = d_cond - d_uncond + _per_example(momentum, d_cond) * running
  norm = jnp.sqrt(_sum(jnp.square(running)))
  scale = jnp.minimum(1.0, norm_threshold / jnp.maximum(norm, 1e-12))
  delta = _per_example(scale, running) * running
  coef = _sum(delta * d_cond) / jnp.maximum(_sum(jnp.square(d_cond)), 1e-12)
  parallel = _per_example(coef, d_cond) * d_cond
  out = d_cond + _per_example(w, d_cond) * (delta - parallel + _per_example(eta, d_cond) * parallel)
  return out, running


def rescale(guided, cond, phi):
  """CFG rescale (Lin et al. 2024): match the per-example std of the conditional prediction,
  then mix: φ·guided·std(cond)/std(guided) + (1 − φ)·guided. φ = 0 returns `guided`."""
  std = lambda x: jnp.sqrt(jnp.mean(jnp.square(x - jnp.mean(x, axis=tuple(range(1, x.ndim)),
                                                             keepdims=True)),
                                    axis=tuple(range(1, x.ndim))))
  ratio = std(cond) / jnp.maximum(std(guided), 1e-12)
  phi = _per_example(phi, guided)
  return phi * (_per_example(ratio, guided) * guided) + (1.0 - phi) * guided


def dynamic_threshold(x, percentile):
  """Imagen's dynamic thresholding: s = max(quantile_p(|x̂|), 1) per example, x̂ ← clip(x̂, ±s)/s."""
  flat = jnp.abs(x.reshape(x.shape[0], -1))
  s = jax.vmap(jnp.quantile)(flat, jnp.asarray(percentile, x.dtype) * jnp.ones(x.shape[0]))
  s = _per_example(jnp.maximum(s, 1.0), x)
  return jnp.clip(x, -s, s) / s


def schedule_factor(kind, logsnr, logsnr_min, logsnr_max, table=None):
  """w's factor along the trajectory; mean 1 over λ uniform in [λ_min, λ_max] for the built-ins.

  'constant' (paper): 1. 'linear': 2·f, f = (λ − λ_min)/(λ_max − λ_min), rising as the sample
  gets cleaner. 'cosine': 1 − cos(π f). 'table': piecewise linear through (λ_k, factor_k).
  """
  f = jnp.clip((logsnr - logsnr_min) / (logsnr_max - logsnr_min), 0.0, 1.0)
  if kind == 'constant':
    return jnp.ones_like(logsnr)
  if kind == 'linear':
    return 2.0 * f
  if kind == 'cosine':
    return 1.0 - jnp.cos(jnp.pi * f)
  if kind == 'table':
    points, factors = table
    return jnp.interp(logsnr, points, factors)
  raise ValueError(f'unknown w schedule {kind!r}; choose one of {", ".join(SCHEDULES)}')


# --- The whole rule, as the samplers use it ----------------------------------------------------

@flax.struct.dataclass
class Guidance:
  """Per-example guidance settings. Arrays are (B,) (scalars broadcast); None switches a piece off.

  w: the paper's w.  rule: 'cfg' (paper), 'apg' (uses apg_eta, apg_norm, apg_momentum) or
  'cfgpp' (CFG++; its λ ∈ [0, 1] is 1 + w).  interval: (λ_lo, λ_hi), guide only there and
  run the network on the B conditional rows elsewhere.  rescale: φ.  threshold: percentile p
  in (0, 1].  schedule: see `schedule_factor`; table: (λ_k, factor_k) for 'table'.
  """
  w: Any
  interval: Optional[Any] = None
  rescale: Optional[Any] = None
  threshold: Optional[Any] = None
  apg_eta: Any = 0.0
  apg_norm: Any = float('inf')
  apg_momentum: Any = -0.5
  table: Optional[Any] = None
  rule: str = flax.struct.field(pytree_node=False, default='cfg')
  schedule: str = flax.struct.field(pytree_node=False, default='constant')

  def __post_init__(self):
    if self.rule not in COMBINE_RULES:
      raise ValueError(f'unknown guidance rule {self.rule!r}; choose one of '
                       f'{", ".join(COMBINE_RULES)}')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'unknown w schedule {self.schedule!r}; choose one of {", ".join(SCHEDULES)}')
    if (self.schedule == 'table') != (self.table is not None):
      raise ValueError("a w table goes with schedule='table', and only with it")

  def per_example(self, b):
    """The same settings with every per-example parameter broadcast to (b,) float32."""
    fit = lambda a: None if a is None else jnp.broadcast_to(jnp.asarray(a, jnp.float32), (b,))
    return self.replace(
        w=fit(self.w), rescale=fit(self.rescale), threshold=fit(self.threshold),
        apg_eta=fit(self.apg_eta), apg_norm=fit(self.apg_norm),
        apg_momentum=fit(self.apg_momentum),
        interval=None if self.interval is None else tuple(fit(a) for a in self.interval),
        table=None if self.table is None else tuple(jnp.asarray(a, jnp.float32) for a in self.table))

  def inside(self, logsnr):
    """(B,) bool: whether this step guides each example."""
    if self.interval is None:
      return jnp.ones(logsnr.shape, bool)
    lo, hi = self.interval
    return (logsnr >= lo) & (logsnr <= hi)

  def effective_w(self, logsnr, logsnr_min, logsnr_max):
    """w_t = w · schedule(λ) · [λ inside the interval], (B,)."""
    factor = schedule_factor(self.schedule, logsnr, logsnr_min, logsnr_max, self.table)
    return jnp.where(self.inside(logsnr), self.w * factor, 0.0)

  def init_state(self, x):
    """The loop state a rule carries between steps (APG's running Δ̄), or () for none."""
    return jnp.zeros_like(x) if self.rule == 'apg' else ()

  def combine(self, z, x_cond, x_uncond, eps_uncond, logsnr, w_t, state, *, alpha, sigma):
    """Guided x̂ and the point the sampler steps from, z̃; returns (x̂, z̃, state).

    x_cond, x_uncond: unclipped x̂ of each prediction; alpha, sigma: broadcast like z.
    """
    inside = self.inside(logsnr)
    if self.rule == 'apg':
      x, new_state = apg(x_cond, x_uncond, w_t, eta=self.apg_eta, norm_threshold=self.apg_norm,
                         momentum=self.apg_momentum, running=state)
      state = jnp.where(_per_example(inside, x), new_state, state)
    else:
      x = classifier_free(x_cond, x_uncond, w_t)
    if self.rescale is not None:
      x = rescale(x, x_cond, jnp.where(inside, self.rescale, 0.0))
    if self.threshold is not None:
      x = jnp.where(_per_example(inside, x), dynamic_threshold(x, self.threshold), x)
    if self.rule == 'cfgpp':   # CFG++: keep x̂, swap the noise direction for the unconditional ε
      z = jnp.where(_per_example(inside, z), alpha * x + sigma * eps_uncond, z)
    return x, z, state


def as_guidance(w):
  """A `Guidance` from w (array or scalar: the paper's rule) or a `Guidance`; None stays None."""
  if w is None or isinstance(w, Guidance):
    return w
  return Guidance(w=w)


def from_settings(w, *, rule='cfg', interval=(), interval_sigma=(), rescale=0.0, threshold=0.0,
                  apg_eta=0.0, apg_norm=0.0, apg_momentum=-0.5, schedule='constant', table=()):
  """A `Guidance` from flat settings as configs and flags hold them (0 or () switches a piece
  off; apg_norm = 0 means no norm threshold). interval is (λ_lo, λ_hi); interval_sigma is EDM's
  (σ_lo, σ_hi], converted by `sigma_to_logsnr`. table: ((λ_k, …), (factor_k, …))."""
  if interval and interval_sigma:
    raise ValueError('give the guidance interval in λ or in σ, not both')
  if interval_sigma:
    lo, hi = interval_sigma
    interval = (sigma_to_logsnr(hi), sigma_to_logsnr(lo))
  return Guidance(
      w=w, rule=rule, schedule=schedule,
      interval=tuple(jnp.asarray(a, jnp.float32) for a in interval) if interval else None,
      rescale=rescale or None, threshold=threshold or None, apg_eta=apg_eta,
      apg_norm=apg_norm or float('inf'), apg_momentum=apg_momentum,
      table=tuple(jnp.asarray(a, jnp.float32) for a in table) if table else None)
