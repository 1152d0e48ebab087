"""FSDP (parameters and optimizer state split over the 'fsdp' axis) trains like data parallelism,
leaves small arrays replicated, and training grids sample the EMA as it is sharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cfg_jax import config_lib, data, inference, model as model_lib, sharding, train
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
  fsdp.mesh.update(data=1, fsdp=8, fsdp_min_bytes=1024)   # the tiny model's arrays are small
  return _train(dp, fmnist_train), _train(fsdp, fmnist_train)


def test_fsdp_shards_parameters_and_optimizer_state(runs):
  dp, fsdp = runs
  kernel = fsdp.params['ResBlock_0']['Conv_0']['kernel']   # (3, 3, 8, 8): split along a dim of 8
  assert 'fsdp' in kernel.sharding.spec
  assert kernel.addressable_shards[0].data.size == kernel.size // 8
  mu = fsdp.opt_state[1][0].mu['ResBlock_0']['Conv_0']['kernel']
  assert 'fsdp' in mu.sharding.spec
  assert dp.params['ResBlock_0']['Conv_0']['kernel'].sharding.is_fully_replicated
  # 32 bytes, under fsdp_min_bytes: replicated, and so are its Adam moments.
  assert fsdp.params['ResBlock_0']['GroupNorm_0']['bias'].sharding.is_fully_replicated
  assert fsdp.opt_state[1][0].nu['ResBlock_0']['GroupNorm_0']['bias'].sharding.is_fully_replicated
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


def test_fsdp_threshold_keeps_small_arrays_replicated():
  """The default threshold (4 MiB) on shapes of the ImageNet-64 U-Net, 8-way FSDP."""
  assert config_lib.base_config().mesh.fsdp_min_bytes == 4 * 1024 ** 2
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 8})
  shapes = {'conv_768': ((3, 3, 768, 768), jnp.float32),    # 20.25 MiB: split
            'conv_384': ((3, 3, 384, 384), jnp.float32),    # 5.06 MiB: split
            'conv_192': ((3, 3, 192, 192), jnp.float32),    # 1.27 MiB: replicated
            'conv_384_bf16': ((3, 3, 384, 384), jnp.bfloat16),   # 2.53 MiB: replicated
            'norm_bias': ((768,), jnp.float32),
            'count': ((), jnp.int32)}
  tree = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}
  specs = {k: s.spec for k, s in sharding.state_shardings(mesh, tree, 4 * 1024 ** 2).items()}
  assert specs == {'conv_768': P(None, None, None, 'fsdp'), 'conv_384': P(None, None, None, 'fsdp'),
                   'conv_192': P(), 'conv_384_bf16': P(), 'norm_bias': P(), 'count': P()}
  # Without a threshold, every array with a dimension that 8 divides is split (as before).
  assert sharding.state_shardings(mesh, tree)['norm_bias'].spec == P('fsdp')


def test_training_grid_samples_the_ema_as_sharded(runs, tmp_path):
  """The sampler gets the FSDP-sharded EMA itself, not a copy gathered onto every device."""
  _, state = runs
  config = tiny_config()
  config.sample.per_class = 1
  mesh = jax.tree.leaves(state.ema_params)[0].sharding.mesh
  pipe = inference.Pipeline(config, state.ema_params, mesh, model=model_lib.from_config(config))
  received = []

  def sampler(params, labels, *args, **kwargs):
    received.append(params)
    return jnp.zeros(labels.shape + pipe.shape)
  pipe.sample_batch = sampler
  train.write_guidance_grid(pipe, state.ema_params, str(tmp_path), int(state.step))
  assert received and (tmp_path / 'samples' / 'grid_0000003.png').exists()
  for got, ema in zip(jax.tree.leaves(received[0]), jax.tree.leaves(state.ema_params),
                      strict=True):
    assert got.sharding == ema.sharding
  kernel = received[0]['ResBlock_0']['Conv_0']['kernel']
  assert max(s.data.size for s in kernel.addressable_shards) == kernel.size // 8
