"""Algorithm 1 as pure functions: condition dropout, the loss, one optimizer + EMA step."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cfg_jax import data, diffusion


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def make_optimizer(train_config):
  """Adam with linear warm-up and global-norm gradient clipping; returns (tx, lr schedule)."""
  schedule = optax.linear_schedule(0.0, train_config.learning_rate, max(train_config.warmup_steps, 1))
  tx = optax.chain(optax.clip_by_global_norm(train_config.grad_clip), optax.adam(schedule))
  return tx, schedule


def drop_labels(rng, labels, p_uncond, null_label):
  """Replaces each label by the null label ∅ with probability p_uncond, independently."""
  drop = jax.random.bernoulli(rng, p_uncond, labels.shape)
  return jnp.where(drop, null_label, labels)


def ema_decay(step, decay):
  """EMA decay with warm-up, min(decay, (1 + t) / (10 + t)), so early averages are not stale."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def step_rng(seed, step):
  """The training randomness of step `step`: a pure function of (seed, step), so resume is exact."""
  return jax.random.fold_in(jax.random.key(seed), step)


def loss_fn(params, model, images, labels, rng, config, *, train=True):
  """‖ε_θ(z_λ, c) − ε‖² (or the v-loss), averaged over pixels and batch; labels already dropped."""
  rng_u, rng_eps, rng_dropout = jax.random.split(rng, 3)
  x = data.to_model_range(images, config.data.pad_to)
  u = jax.random.uniform(rng_u, (x.shape[0],))
  logsnr = diffusion.logsnr_schedule(u, config.diffusion.logsnr_min, config.diffusion.logsnr_max)
  eps = jax.random.normal(rng_eps, x.shape)
  z = diffusion.diffuse(x, logsnr, eps)
  target = eps if config.diffusion.prediction == 'eps' else diffusion.v_target(x, eps, logsnr)
  out = model.apply({'params': params}, z, logsnr, labels, train=train,
                    rngs={'dropout': rng_dropout})
  return jnp.mean(jnp.square(out - target))


def init_state(model, tx, config, rng):
  size, ch = config.data.pad_to or config.data.image_size, config.data.channels
  z = jnp.zeros((1, size, size, ch), jnp.float32)
  params = model.init(rng, z, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def train_step(state, batch, *, model, tx, schedule, config):
  """One step of Algorithm 1. A non-finite loss, gradient or update leaves the state unchanged."""
  rng_drop, rng_loss = jax.random.split(step_rng(config.seed, state.step))
  labels = drop_labels(rng_drop, batch['label'], config.train.p_uncond, config.data.num_classes)
  loss, grads = jax.value_and_grad(loss_fn)(state.params, model, batch['image'], labels,
                                            rng_loss, config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay(state.step, config.train.ema_decay)
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)

  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         ema_params=keep(ema_params, state.ema_params),
                         opt_state=keep(opt_state, state.opt_state))
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': schedule(state.step),
             'finite': finite}
  return new_state, metrics
