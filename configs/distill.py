"""Guidance distillation (Meng et al. 2023) of the default Fashion-MNIST teacher, stage 1 or 2.

  python launch/distill.py --teacher=workdirs/fmnist --workdir=workdirs/fmnist_distilled
  python launch/distill.py --config=configs/distill.py:progressive \
      --teacher=workdirs/fmnist_distilled --workdir=workdirs/fmnist_progressive

Stage 1 ('guidance', the default) trains a student ε_η(z, λ, c, w), w ~ U[0, 4], sampled by DDIM
in `steps` = 17 steps (16 updates); `:progressive` (stage 2) halves its updates `rounds` = 2
times (17 -> 9 -> 5 steps), one student per round in WORKDIR/round_k. train.num_steps counts
the steps of stage 1, or of each round. Sized from the teacher's train step (0.64 s at batch 64
on an idle 2-core AMD EPYC) and the ratios measured against it, interleaved on a busy machine:
a stage-1 step (one 2B-row teacher call, the student's step) costs 1.54x, a stage-2 step (two
B-row teacher calls, the student's step) 1.30x; so about 20 min for stage 1's 1,200 steps and
8-9 min for each round's 600 when idle (stage 1 measured 30 min 47 s beside other jobs). What
each stage gives: docs/RESULTS.md, "Guidance distillation".

Variant `tiny`: seconds-scale runs for tests and smoke runs (of a tiny teacher, e.g. one trained
with configs/fashion_mnist.py:tiny); `tiny_progressive` is its stage 2.
"""
from cfg_jax import distill_train


def get_config(variant=''):
  config = distill_train.base_config()
  config.train.update(num_steps=1200, learning_rate=2e-4, warmup_steps=50, log_every=25,
                      checkpoint_every=200)
  if variant in ('progressive', 'tiny_progressive'):
    config.stage = 'progressive'
    config.train.num_steps = 600
  if variant.startswith('tiny'):
    config.steps = 5
    config.train.update(num_steps=6, batch_size=16, learning_rate=1e-3, warmup_steps=2,
                        log_every=2, checkpoint_every=3, ema_decay=0.9)
    config.sample.per_class = 0
  elif variant not in ('', 'progressive'):
    raise ValueError(f'unknown variant {variant!r} of distill (known: progressive, tiny, '
                     f'tiny_progressive)')
  return config
