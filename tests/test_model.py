"""cfg_jax.model.GroupNorm (statistics from per-channel sums, modulation folded in) against a
two-pass float64 NumPy group normalisation, for values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import model as model_lib

EPS = 1e-6


def _reference(x, gamma, beta, groups, scale=None, shift=None):
  """GroupNorm in float64, two-pass variance, then y·(1 + scale) + shift per (example, channel)."""
  b, c = x.shape[0], x.shape[-1]
  g = np.asarray(x, np.float64).reshape(b, -1, groups, c // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  y = ((g - mean) / np.sqrt(var + EPS)).reshape(x.shape) * gamma + beta
  if scale is not None:
    spread = lambda a: np.asarray(a, np.float64).reshape((b,) + (1,) * (x.ndim - 2) + (c,))
    y = y * (1 + spread(scale)) + spread(shift)
  return y


def _inputs(shape, groups, seed=0, offset=3.0):
  rng = np.random.default_rng(seed)
  b, c = shape[0], shape[-1]
  x = (offset + 2.0 * rng.normal(size=shape)).astype(np.float32)   # a mean well away from 0
  gamma, beta = (rng.normal(size=(c,)).astype(np.float32) for _ in range(2))
  scale, shift = (0.3 * rng.normal(size=(b, c)).astype(np.float32) for _ in range(2))
  norm = model_lib.GroupNorm(groups)
  params = {'scale': gamma, 'bias': beta}
  assert jax.tree.map(jnp.shape, norm.init(jax.random.key(0), x)['params']) == \
      {'scale': (c,), 'bias': (c,)}   # flax.linen.GroupNorm's names and shapes
  return norm, params, x, scale, shift


@pytest.mark.parametrize('shape,groups', [((4, 5, 6, 16), 4), ((3, 7, 7, 8), 8), ((2, 9, 12), 3)])
@pytest.mark.parametrize('modulated', [False, True])
def test_values_match_float64(shape, groups, modulated):
  norm, params, x, scale, shift = _inputs(shape, groups)
  ss = (scale, shift) if modulated else None
  got = norm.apply({'params': params}, x, ss)
  want = _reference(x, params['scale'], params['bias'], groups, *(ss or ()))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_gradients_match_float64():
  """d⟨y, r⟩ / d(x, γ, β, scale, shift) against the float64 two-pass formula's, by jax.grad."""
  norm, params, x, scale, shift = _inputs((3, 6, 6, 8), 4, seed=1)
  r = np.random.default_rng(2).normal(size=x.shape)

  def ours(x, gamma, beta, scale, shift):
    y = norm.apply({'params': {'scale': gamma, 'bias': beta}}, x, (scale, shift))
    return jnp.sum(y * r.astype(np.float32))

  def reference(x, gamma, beta, scale, shift):   # float64 throughout
    g = x.reshape(3, -1, 4, 2)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + EPS)).reshape(x.shape) * gamma + beta
    y = y * (1 + scale[:, None, None]) + shift[:, None, None]
    return jnp.sum(y * r)

  args = (x, params['scale'], params['bias'], scale, shift)
  got = jax.grad(ours, argnums=range(5))(*args)
  with jax.enable_x64(True):
    want = jax.grad(reference, argnums=range(5))(*(np.asarray(a, np.float64) for a in args))
    want = [np.asarray(w) for w in want]
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-4 * np.abs(w).max())


def test_bfloat16_activations_keep_float32_statistics():
  """With bfloat16 activations the output is bfloat16 but only rounded once, at the end: the
  normalisation itself (here of values around 30 with spread 2) runs in float32."""
  norm, params, x, scale, shift = _inputs((2, 8, 8, 8), 2, offset=30.0)
  x16 = x.astype(jnp.bfloat16)
  got = model_lib.GroupNorm(2, dtype=jnp.bfloat16).apply({'params': params}, x16, (scale, shift))
  want = _reference(np.asarray(x16, np.float32), params['scale'], params['bias'], 2, scale, shift)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)


def test_constant_groups_give_the_modulated_bias():
  """A group with one value throughout has variance 0 (the one-pass formula may round it below
  0: it is clamped) and normalises to 0, leaving β·(1 + scale) + shift."""
  norm, params, _, scale, shift = _inputs((2, 4, 4, 6), 3)
  x = np.broadcast_to(np.float32([0.5, 0.5, -7.25, -7.25, 1024, 1024]), (2, 4, 4, 6))
  got = norm.apply({'params': params}, x, (scale, shift))
  want = params['bias'] * (1 + scale[:, None, None]) + shift[:, None, None]
  np.testing.assert_allclose(got, np.broadcast_to(want, x.shape), rtol=1e-5, atol=1e-5)
