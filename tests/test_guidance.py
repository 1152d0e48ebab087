"""The guidance rule ε̃ = (1 + w)·ε_c − w·ε_u and its "scale" alias."""
import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import guidance


def _preds():
  k1, k2 = jax.random.split(jax.random.key(0))
  return jax.random.normal(k1, (5, 4, 4, 3)), jax.random.normal(k2, (5, 4, 4, 3))


def test_rule_is_the_papers_formula_per_example_and_channel():
  c, u = _preds()
  w = jnp.array([-1.0, 0.0, 0.3, 1.0, 4.0])
  out = np.asarray(guidance.classifier_free(c, u, w), np.float64)
  c64, u64, w64 = (np.asarray(a, np.float64) for a in (c, u, w))
  want = (1 + w64[:, None, None, None]) * c64 - w64[:, None, None, None] * u64
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  # Every channel is guided: each one moves when w moves.
  delta = np.abs(np.asarray(guidance.classifier_free(c, u, w + 1.0)) - out).mean(axis=(0, 1, 2))
  assert np.all(delta > 0.1)


def test_w_zero_is_exactly_the_conditional_prediction():
  c, u = _preds()
  np.testing.assert_array_equal(guidance.classifier_free(c, u, jnp.zeros(5)), c)


def test_w_minus_one_is_the_unconditional_prediction():
  c, u = _preds()
  np.testing.assert_allclose(guidance.classifier_free(c, u, -jnp.ones(5)), u, atol=1e-6)


def test_scale_alias_agrees():
  c, u = _preds()
  s = jnp.array([0.0, 1.0, 1.5, 3.0, 7.5])
  by_scale = u + s[:, None, None, None] * (c - u)   # the common ε_u + s(ε_c − ε_u)
  np.testing.assert_allclose(guidance.classifier_free(c, u, guidance.w_from_scale(s)), by_scale,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guidance.scale_from_w(guidance.w_from_scale(s)), s)
