"""FSDP (parameters and optimizer state split over the 'fsdp' axis) trains like data parallelism."""
import jax
import numpy as np
import pytest

from cfg_jax import data, sharding, train
from conftest import tiny_config

STEPS = 3


def _train(config, source):
  """STEPS steps of the real sharded train step on the mesh config.mesh describes."""
  mesh = sharding.make_mesh(config.mesh)
  _, init, step, _ = train.build(config, mesh)
  state = init(jax.random.key(config.seed))
  batches = data.batches(source, seed=config.seed, global_batch_size=config.train.batch_size,
                         num_threads=1)
  for _ in range(STEPS):   # one step in flight, as in training (CPU collectives time out under load)
    state = jax.block_until_ready(step(state, sharding.global_batch(next(batches), mesh))[0])
  return state


@pytest.fixture(scope='module')
def runs(fmnist_train):
  dp = tiny_config()
  fsdp = tiny_config()
  fsdp.mesh.update(data=1, fsdp=8)
  return _train(dp, fmnist_train), _train(fsdp, fmnist_train)


def test_fsdp_shards_parameters_and_optimizer_state(runs):
  dp, fsdp = runs
  kernel = fsdp.params['ResBlock_0']['Conv_0']['kernel']   # (3, 3, 8, 8): split along a dim of 8
  assert 'fsdp' in kernel.sharding.spec
  assert kernel.addressable_shards[0].data.size == kernel.size // 8
  mu = fsdp.opt_state[1][0].mu['ResBlock_0']['Conv_0']['kernel']
  assert 'fsdp' in mu.sharding.spec
  assert dp.params['ResBlock_0']['Conv_0']['kernel'].sharding.is_fully_replicated
  per_device = lambda s: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(s))
  assert per_device(fsdp.params) < per_device(dp.params) / 3


def test_fsdp_matches_data_parallel(runs):
  """Same global batch, same randomness: only the order of the gradient sums differs.

  Adam divides by sqrt(v): for parameters whose gradients are ~0 (zero-initialised output
  layers) that order shows up at ~1e-6 after a few steps; any real sharding error is ~1e-2.
  """
  dp, fsdp = runs
  assert int(dp.step) == int(fsdp.step) == STEPS
  for name in ('params', 'ema_params', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(dp, name)), jax.tree.leaves(getattr(fsdp, name))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)
