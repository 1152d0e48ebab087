"""Guidance distillation (Meng et al. 2023) of a trained workdir, stage 1 or 2.

  python launch/distill.py --teacher=workdirs/fmnist --workdir=workdirs/fmnist_distilled
  python launch/distill.py --teacher=workdirs/fmnist_distilled --workdir=workdirs/fmnist_prog \
      --config.stage=progressive

Stage 1 ('guidance') trains a student ε_η(z, λ, c, w) sampled by DDIM in `steps` steps; stage 2
('progressive') halves its DDIM updates `rounds` times (17 -> 9 -> 5 steps), one student per
round in WORKDIR/round_k. train.num_steps counts the steps of stage 1, or of each round.

Variant `tiny`: seconds-scale runs for tests and smoke runs (a tiny teacher, e.g.
configs/fashion_mnist.py:tiny).
"""
from cfg_jax import distill_train


def get_config(variant=''):
  config = distill_train.base_config()
  if variant == 'tiny':
    config.steps = 5
    config.train.update(num_steps=6, batch_size=16, learning_rate=1e-3, warmup_steps=2,
                        log_every=2, checkpoint_every=3, ema_decay=0.9)
    config.sample.per_class = 0
  elif variant:
    raise ValueError(f'unknown variant {variant!r} of distill (known: tiny)')
  return config
