"""Continuous-time variance-preserving diffusion in log-SNR λ (paper §2).

Everything is float32 and written in numerically stable forms (log-sigmoid, expm1) so that
the schedule endpoints λ = ±20 give finite, accurate values.
"""
import jax
import jax.numpy as jnp

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def logsnr_schedule(u, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
  """λ(u) = −2 log tan(a·u + b): u = 0 is clean (λ_max), u = 1 is pure noise (λ_min).

  Near u = 1 the angle approaches π/2, where tan loses precision in float32; there we use
  λ = 2 log tan(π/2 − a·u − b) with π/2 − a·u − b = arctan(e^{λ_min/2}) + a·(1 − u), which has
  no cancellation.
  """
  u = jnp.asarray(u, jnp.float32)
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  angle = a * u + b
  complement = jnp.arctan(jnp.exp(0.5 * logsnr_min)) + a * (1.0 - u)
  return jnp.where(angle < 0.25 * jnp.pi, -2.0 * jnp.log(jnp.tan(angle)),
                   2.0 * jnp.log(jnp.tan(complement)))


TRAIN_LOGSNR = ('cosine', 'normal', 'logistic')


def sample_training_logsnr(rng, shape, *, kind='cosine', logsnr_min=LOGSNR_MIN,
                           logsnr_max=LOGSNR_MAX, mean=2.4, std=2.4):
  """Draws the training noise levels λ of Algorithm 1.

  'cosine' (paper): λ(u) with u ~ U[0, 1], the truncated hyperbolic-secant density over
  [λ_min, λ_max]. 'normal': λ ~ N(mean, std²) clipped to [λ_min, λ_max]; this is EDM's
  log-normal σ, since EDM's σ is σ_λ/α_λ = e^{−λ/2}: ln σ ~ N(P_mean, P_std²) is λ ~
  N(−2 P_mean, (2 P_std)²), and EDM's P_mean = −1.2, P_std = 1.2 give the defaults.
  'logistic': λ = mean + s·logit(u), s = std·√3/π (so std is its standard deviation), clipped;
  the cosine's density 1/(2π cosh(λ/2)) has std π and heavier tails, so std < π concentrates
  training on mid noise levels while still reaching the ends of the range.
  """
  if kind == 'cosine':
    return logsnr_schedule(jax.random.uniform(rng, shape), logsnr_min, logsnr_max)
  if kind == 'normal':
    return jnp.clip(mean + std * jax.random.normal(rng, shape), logsnr_min, logsnr_max)
  if kind == 'logistic':
    scale = std * jnp.sqrt(3.0) / jnp.pi
    return jnp.clip(mean + scale * jax.random.logistic(rng, shape), logsnr_min, logsnr_max)
  raise ValueError(f'unknown training λ distribution {kind!r}; choose one of {TRAIN_LOGSNR}')


def noise_level_input(logsnr):
  """The network's view of the noise level, arctan(exp(−λ/2)) / (π/2) ∈ (0, 1)."""
  return jnp.arctan(jnp.exp(-0.5 * logsnr)) / (0.5 * jnp.pi)


def alpha_sigma(logsnr):
  """α_λ = sqrt(sigmoid(λ)), σ_λ = sqrt(sigmoid(−λ)), via log-sigmoid."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return (jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr)),
          jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr)))


def bcast(a, x):
  """Per-example coefficients (B,) (or a scalar) broadcast against a batch x of shape (B, ...)."""
  return jnp.reshape(a, jnp.shape(a) + (1,) * (jnp.ndim(x) - jnp.ndim(a)))


def diffuse(x, logsnr, eps):
  """z_λ = α_λ x + σ_λ ε, a sample of q(z_λ | x)."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(alpha, x) * x + bcast(sigma, x) * eps


def posterior(z, x, logsnr, logsnr_next):
  """q(z_λ′ | z_λ, x) for λ < λ′ (λ′ cleaner): returns (mean, log variance).

  μ̃ = e^{λ−λ′}(α_λ′/α_λ) z + (1 − e^{λ−λ′}) α_λ′ x,   σ̃² = (1 − e^{λ−λ′}) σ²_λ′.
  """
  alpha, _ = alpha_sigma(logsnr)
  alpha_next, sigma_next = alpha_sigma(logsnr_next)
  d = logsnr - logsnr_next                      # < 0
  mean = (bcast(jnp.exp(d) * alpha_next / alpha, z) * z
          + bcast(-jnp.expm1(d) * alpha_next, x) * x)
  log_var = jnp.log(-jnp.expm1(d)) + 2.0 * jnp.log(sigma_next)
  return mean, log_var


def forward_log_var(logsnr, logsnr_next):
  """log σ²_{λ|λ′} = log((1 − e^{λ−λ′}) σ²_λ), the variance of q(z_λ | z_λ′), λ < λ′."""
  _, sigma = alpha_sigma(logsnr)
  return jnp.log(-jnp.expm1(logsnr - logsnr_next)) + 2.0 * jnp.log(sigma)


def predict_x(z, eps, logsnr):
  """x̂ = (z − σ ε̂) / α."""
  alpha, sigma = alpha_sigma(logsnr)
  return (z - bcast(sigma, z) * eps) / bcast(alpha, z)


def predict_eps(z, x, logsnr):
  """ε̂ = (z − α x̂) / σ, the ε consistent with a (possibly clipped) x̂."""
  alpha, sigma = alpha_sigma(logsnr)
  return (z - bcast(alpha, z) * x) / bcast(sigma, z)


def v_target(x, eps, logsnr):
  """v = α ε − σ x (Salimans & Ho 2022), an optional prediction target."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(alpha, x) * eps - bcast(sigma, x) * x


def eps_from_v(z, v, logsnr):
  """ε = σ z + α v, turning a v-prediction into the ε the samplers consume."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(sigma, z) * z + bcast(alpha, z) * v
