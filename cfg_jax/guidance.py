"""Guidance rules: how the conditional and unconditional predictions combine (paper §4).

A rule is `rule(eps_cond, eps_uncond, w, step) -> eps`, with w of shape (B,) (one value per
example) and `step` a `StepInfo` for rules that look at the noise level or the sample. The
samplers take any such function, so variants (guidance interval, CFG rescale, thresholding)
slot in without touching them. Every output channel is guided.

Convention: the paper's w. Many codebases write ε_u + s·(ε_c − ε_u) with a "guidance scale"
s = 1 + w; `w_from_scale` converts. w = 0 is the plain conditional model, w < 0 moves toward the
unconditional one; w is never clamped.
"""
from typing import NamedTuple

import jax.numpy as jnp


class StepInfo(NamedTuple):
  """What a guidance rule may look at besides the two predictions."""
  z: jnp.ndarray        # (B, ...) current sample
  logsnr: jnp.ndarray   # (B,) its log-SNR λ


def _per_example(w, x):
  w = jnp.asarray(w, x.dtype)
  return jnp.reshape(w, w.shape + (1,) * (x.ndim - w.ndim))


def classifier_free(eps_cond, eps_uncond, w, step=None):
  """ε̃ = (1 + w)·ε(z, c) − w·ε(z, ∅)  (paper, Algorithm 2)."""
  del step
  w = _per_example(w, eps_cond)
  return (1.0 + w) * eps_cond - w * eps_uncond


def w_from_scale(scale):
  """The paper's w for a "guidance scale" s of the ε_u + s(ε_c − ε_u) convention: w = s − 1."""
  return jnp.asarray(scale) - 1.0


def scale_from_w(w):
  """The "guidance scale" s = 1 + w."""
  return 1.0 + jnp.asarray(w)
