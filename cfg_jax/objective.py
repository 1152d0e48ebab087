"""Algorithm 1 as pure functions: condition dropout, the loss, one optimizer + EMA step."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cfg_jax import conditioning, data, diffusion, model as model_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


LR_SCHEDULES = ('constant', 'cosine')
LOSS_WEIGHTINGS = ('none', 'min_snr', 'edm')


def make_optimizer(train_config):
  """Adam (β₂ = train.adam_b2) with linear warm-up and global-norm gradient clipping; returns
  (tx, lr schedule).

  After the warm-up the rate stays constant (paper) or follows a cosine to 0 at num_steps.
  """
  t = train_config
  warmup = max(t.warmup_steps, 1)
  if t.lr_schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup,
                                                  max(t.num_steps, warmup + 1))
  else:
    schedule = optax.linear_schedule(0.0, t.learning_rate, warmup)
  tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(schedule, b2=t.adam_b2))
  return tx, schedule


def log_loss_weight(logsnr, *, weighting, prediction, gamma=5.0, sigma_data=0.5):
  """log of the factor on the MSE of the network's own target (ε or v) that turns it into the
  chosen weighting; 0 for 'none' (the paper's plain ε-MSE, or plain v-MSE).

  Every weighting is a weight on ‖x̂ − x‖²: ε-MSE is SNR·‖x̂ − x‖² and v-MSE is
  (SNR + 1)·‖x̂ − x‖², SNR = e^λ. 'min_snr' (Hang et al. 2023) weights x by min(SNR, γ);
  'edm' (Karras et al. 2022) by 1/σ² + 1/σ_data² = SNR + 1/σ_data² (σ = e^{−λ/2}).
  Computed in log space so that |λ| = 20 is exact in float32.
  """
  native = logsnr if prediction == 'eps' else jax.nn.softplus(logsnr)
  if weighting == 'none':
    return jnp.zeros_like(logsnr)
  if weighting == 'min_snr':
    return jnp.minimum(logsnr, jnp.log(gamma)) - native
  if weighting == 'edm':
    return jnp.logaddexp(logsnr, -2.0 * jnp.log(sigma_data)) - native
  raise ValueError(f'unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}')


def _drop(rng, cond, null, p):
  """Each example's whole `cond` (an array or a pytree of (B, ...) leaves) replaced by its
  `null` with probability p, independently."""
  b = conditioning.batch_size(cond)
  drop = jax.random.bernoulli(rng, p, (b,))
  return jax.tree.map(lambda c, n: jnp.where(drop.reshape((b,) + (1,) * (c.ndim - 1)), n, c),
                      cond, null)


def drop_condition(rng, cond, p_uncond, null):
  """Algorithm 1's dropout: replaces each example's condition by ∅ with probability p_uncond.

  cond: (B,) labels with p_uncond a float and null their ∅ (cfg_jax.conditioning), or a dict of
  kinds with p_uncond a dict of the same keys: each kind is dropped independently with its own
  probability (as SD3 drops each text encoder), so every kind is absent at its intended rate.
  """
  if not isinstance(cond, dict):
    return _drop(rng, cond, null, p_uncond)
  keys = dict(zip(sorted(cond), jax.random.split(rng, len(cond))))
  return {kind: _drop(keys[kind], cond[kind], null[kind], p_uncond[kind]) for kind in cond}


def ema_decay(step, decay, power=0.0):
  """The EMA's decay at `step` (0-based).

  power = 0: min(decay, (1 + t) / (10 + t)), a constant decay with warm-up so that early
  averages are not stale. power = γ > 0: EDM2's power-function EMA, β_t = (1 − 1/t)^{γ+1} with
  t = step + 1, whose average has a length proportional to the training so far.
  """
  step = jnp.asarray(step, jnp.float32)
  if power > 0:
    return jnp.power(1.0 - 1.0 / (step + 1.0), power + 1.0)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def step_rng(seed, step):
  """The training randomness of step `step`: a pure function of (seed, step), so resume is exact."""
  return jax.random.fold_in(jax.random.key(seed), step)


def noisy_batch(rng_u, rng_eps, images, config):
  """(x, λ, ε, z_λ): images in the model's range, training noise levels (config.diffusion) and
  the noisy inputs of Algorithm 1."""
  d = config.diffusion
  x = data.to_model_range(images, config.data.pad_to)
  logsnr = diffusion.sample_training_logsnr(
      rng_u, (x.shape[0],), kind=d.train_logsnr, logsnr_min=d.logsnr_min,
      logsnr_max=d.logsnr_max, mean=d.train_logsnr_mean, std=d.train_logsnr_std)
  eps = jax.random.normal(rng_eps, x.shape)
  return x, logsnr, eps, diffusion.diffuse(x, logsnr, eps)


def weighted_mse(out, target, logsnr, config):
  """The squared error of the network's own target (ε or v), averaged over pixels, weighted
  per example by `config.train.loss_weighting` and averaged over the batch."""
  t = config.train
  mse = jnp.mean(jnp.square(out - target), axis=tuple(range(1, out.ndim)))
  weight = jnp.exp(log_loss_weight(logsnr, weighting=t.loss_weighting,
                                   prediction=config.diffusion.prediction,
                                   gamma=t.min_snr_gamma, sigma_data=t.edm_sigma_data))
  return jnp.mean(weight * mse)


def loss_fn(params, model, images, labels, rng, config, *, train=True):
  """‖ε_θ(z_λ, c) − ε‖² (or the v-loss), weighted per example by `config.train.loss_weighting`
  ('none': the paper's plain loss), averaged over pixels and batch; `labels`: the condition
  (cfg_jax.conditioning), already dropped."""
  rng_u, rng_eps, rng_dropout = jax.random.split(rng, 3)
  x, logsnr, eps, z = noisy_batch(rng_u, rng_eps, images, config)
  target = eps if config.diffusion.prediction == 'eps' else diffusion.v_target(x, eps, logsnr)
  out = model.apply({'params': params}, z, logsnr, labels, train=train,
                    rngs={'dropout': rng_dropout})
  return weighted_mse(out, target, logsnr, config)


def init_state(model, tx, config, rng):
  params = model_lib.init_params(model, config, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def apply_gradients(state, loss, grads, *, tx, schedule, config):
  """The optimizer and EMA update of `state` by `grads`, and the step's metrics. A non-finite
  loss, gradient or update leaves the state unchanged (but for the step counters)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay(state.step, config.train.ema_decay, config.train.ema_power)
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)

  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
  # A skipped step keeps every value but still counts: the optimizer's step counters advance
  # with state.step, so the learning rate and Adam's bias correction follow the one clock.
  keep = lambda new, old: jax.tree.map(
      lambda n, o: n if jnp.issubdtype(n.dtype, jnp.integer) else jnp.where(finite, n, o),
      new, old)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         ema_params=keep(ema_params, state.ema_params),
                         opt_state=keep(opt_state, state.opt_state))
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': schedule(state.step),
             'nonfinite': jnp.logical_not(finite).astype(jnp.int32)}
  return new_state, metrics


def train_step(state, batch, *, model, tx, schedule, config):
  """One step of Algorithm 1. A non-finite loss, gradient or update leaves the state unchanged."""
  rng_drop, rng_loss = jax.random.split(step_rng(config.seed, state.step))
  cond = conditioning.from_batch(batch, config.condition.kinds)
  labels = drop_condition(rng_drop, cond, conditioning.p_uncond(config),
                          conditioning.null_like(cond, config.data.num_classes))
  loss, grads = jax.value_and_grad(loss_fn)(state.params, model, batch['image'], labels,
                                            rng_loss, config)
  return apply_gradients(state, loss, grads, tx=tx, schedule=schedule, config=config)
