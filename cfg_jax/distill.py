"""Guidance distillation (Meng et al. 2023) as pure functions: the targets, the loss, one step.

Stage 1 (`guidance_example`): a student ε_η(z, λ, c, w) learns the teacher's guided prediction
ε̃ = (1 + w)·ε_θ(z, c) − w·ε_θ(z, ∅) (the same rule on x̂: x̂ is affine in ε at fixed z) on the
teacher's training data and noise levels (config.diffusion.train_logsnr), w ~ U[w_min, w_max]
per example. Sampling it then costs one B-row network call per step at any w.

Stage 2 (`progressive_example`, Salimans & Ho 2022, Algorithm 2): a student with half the DDIM
steps learns to land, in one step t → t″ of its grid, where two DDIM steps t → t′ → t″ of its
teacher land; its teacher's grid has 2M − 1 points for the student's M, so the student's point j
is the teacher's point 2j and the grids nest.

Loss weighting (both stages): the teacher's `config.train.loss_weighting` on the squared error
of the network's own output (ε or v) against the target turned into that parametrisation, as in
training (`objective.weighted_mse`); for the default v-teacher with min-SNR-5 (and for an ε one) that
is a weight min(SNR, 5) on the x̂-error.
"""
import flax
import jax
import jax.numpy as jnp

from cfg_jax import data, diffusion, guidance, inference, objective, sampling

STAGES = ('guidance', 'progressive')


def guided_output(model, params, z, logsnr, labels, w, *, null_label):
  """(1 + w)·f(z, c) − w·f(z, ∅) of the network's own output f (ε or v: both affine in x̂ at
  fixed z, so this is the guided x̂ in either parametrisation), from one 2B-row call."""
  pairs = sampling.interleave((z, logsnr, labels), (z, logsnr, null_label))   # as the sampler
  out = model.apply({'params': params}, *pairs).reshape((z.shape[0], 2) + z.shape[1:])
  return guidance.classifier_free(out[:, 0], out[:, 1], w)


def native_target(z, x, logsnr, prediction):
  """The network's own target for a wanted x̂ at z: ε = (z − α x̂)/σ or v = (α z − x̂)/σ."""
  alpha, sigma = (diffusion.bcast(a, z) for a in diffusion.alpha_sigma(logsnr))
  return ((z - alpha * x) if prediction == 'eps' else (alpha * z - x)) / sigma


def sample_w(rng, n, config):
  """w ~ U[w_min, w_max] per example (config.distill)."""
  return jax.random.uniform(rng, (n,), minval=config.distill.w_min, maxval=config.distill.w_max)


def guidance_example(rng, batch, teacher_params, *, teacher, config):
  """Stage 1: (z, λ, labels, w, target) for a batch of data; λ as in the teacher's training."""
  rng_u, rng_eps, rng_w = jax.random.split(rng, 3)
  _, logsnr, _, z = objective.noisy_batch(rng_u, rng_eps, batch['image'], config)
  labels = batch['label']
  w = sample_w(rng_w, labels.shape[0], config)
  return z, logsnr, labels, w, guided_output(teacher, teacher_params, z, logsnr, labels, w,
                                             null_label=config.data.num_classes)


def ddim_x_target(z, z_next, logsnr, logsnr_next):
  """The x̂ whose DDIM step from z at λ lands on z_next at λ″ > λ (Salimans & Ho 2022, Alg. 2).

  z″ = α″ x̂ + σ″ (z − α x̂)/σ solves to x̂ = (z″/σ″ − z/σ) / (e^{λ″/2} − e^{λ/2}) (SNR^½ = α/σ);
  the difference is written with expm1 so that close λ lose nothing.
  """
  _, sigma = diffusion.alpha_sigma(logsnr)
  _, sigma_next = diffusion.alpha_sigma(logsnr_next)
  b = lambda a: diffusion.bcast(a, z)
  gap = -jnp.exp(0.5 * logsnr_next) * jnp.expm1(0.5 * (logsnr - logsnr_next))
  return (z_next / b(sigma_next) - z / b(sigma)) / b(gap)


def two_step_target(eps_fn, z, logsnr, logsnr_mid, logsnr_next, *, clip):
  """x̂ for one DDIM step λ → λ″ that matches the teacher's two DDIM steps λ → λ′ → λ″.

  eps_fn(z, λ) -> ε of the teacher; its x̂ is clipped to [−1, 1] when `clip`, as its sampler does.
  """
  def teacher_x(z, lam):
    x = diffusion.predict_x(z, eps_fn(z, lam), lam)
    return jnp.clip(x, -1.0, 1.0) if clip else x
  z_mid = sampling.ddim_step(z, teacher_x(z, logsnr), logsnr, logsnr_mid)
  z_next = sampling.ddim_step(z_mid, teacher_x(z_mid, logsnr_mid), logsnr_mid, logsnr_next)
  return ddim_x_target(z, z_next, logsnr, logsnr_next)


def grid_triples(j, steps, sample_config):
  """(λ_t, λ_t′, λ_t″) of the student's step j → j + 1 on a grid of `steps` points: the teacher's
  points 2j, 2j + 1, 2j + 2 on its grid of 2·steps − 1 points (same kind and range)."""
  s = sample_config
  lam = lambda t: sampling.logsnr_grid(t, jnp.asarray(2 * steps - 1), grid=s.grid, rho=s.rho,
                                       logsnr_min=s.logsnr_min, logsnr_max=s.logsnr_max)
  return lam(2 * j), lam(2 * j + 1), lam(2 * j + 2)


def progressive_example(rng, batch, teacher_params, *, teacher, config):
  """Stage 2: (z, λ, labels, w, target) at a uniformly drawn step j of the student's grid
  (config.sample.steps points, j = 0 … steps − 2), z = α x + σ ε from the data."""
  rng_t, rng_eps, rng_w = jax.random.split(rng, 3)
  x = data.to_model_range(batch['image'], config.data.pad_to)
  labels, n = batch['label'], x.shape[0]
  j = jax.random.randint(rng_t, (n,), 0, config.sample.steps - 1)
  logsnr, logsnr_mid, logsnr_next = grid_triples(j, config.sample.steps, config.sample)
  z = diffusion.diffuse(x, logsnr, jax.random.normal(rng_eps, x.shape))
  w = sample_w(rng_w, n, config)
  p = config.diffusion.prediction
  eps_fn = inference.eps_fn_for(teacher, teacher_params, p, w=w)
  x_target = two_step_target(lambda z, lam: eps_fn(z, lam, labels), z, logsnr, logsnr_mid,
                             logsnr_next, clip=config.sample.clip)
  return z, logsnr, labels, w, native_target(z, x_target, logsnr, p)


EXAMPLES = {'guidance': guidance_example, 'progressive': progressive_example}


def loss_fn(params, model, example, rng_dropout, config):
  """The student's weighted error against the example's target (`objective.weighted_mse`)."""
  z, logsnr, labels, w, target = example
  out = model.apply({'params': params}, z, logsnr, labels, w, train=True,
                    rngs={'dropout': rng_dropout})
  return objective.weighted_mse(out, target, logsnr, config)


def init_state(model, tx, config, teacher_params, rng):
  """The student's first state: its teacher's parameters, and where the teacher has none (the
  w-embedding of stage 1) a fresh initialisation, whose last layer is zero."""
  state = objective.init_state(model, tx, config, rng)
  student = flax.traverse_util.flatten_dict(state.params)
  teacher = flax.traverse_util.flatten_dict(teacher_params)
  wrong = [k for k in teacher if k not in student or student[k].shape != teacher[k].shape]
  if wrong:
    raise ValueError(f'the teacher\'s parameter {"/".join(wrong[0])} does not fit the student')
  params = flax.traverse_util.unflatten_dict({**student, **teacher})
  return objective.TrainState(step=state.step, params=params,
                              ema_params=jax.tree.map(jnp.copy, params),
                              opt_state=tx.init(params))


def step(state, batch, teacher_params, *, model, teacher, tx, schedule, config):
  """One distillation step of config.distill.stage; the teacher's parameters stay frozen."""
  rng_example, rng_dropout = jax.random.split(objective.step_rng(config.seed, state.step))
  example = EXAMPLES[config.distill.stage](rng_example, batch, teacher_params, teacher=teacher,
                                           config=config)
  loss, grads = jax.value_and_grad(loss_fn)(state.params, model, example, rng_dropout, config)
  return objective.apply_gradients(state, loss, grads, tx=tx, schedule=schedule, config=config)
