"""Algorithm 1 on real Fashion-MNIST: condition dropout, the U-Net, sharded steps, checkpoints."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import checkpoint, data, model as model_lib, objective, sharding, train
from conftest import tiny_config


@pytest.mark.parametrize('p', [0.1, 0.5])
def test_drop_labels_rate_within_binomial_error(p):
  n = 200_000
  labels = jnp.zeros((n,), jnp.int32) + 3
  out = np.asarray(objective.drop_condition(jax.random.key(0), labels, p, 10))
  dropped = np.mean(out == 10)
  assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / n)
  assert set(np.unique(out)) == {3, 10}


def test_drop_labels_extremes():
  labels = jnp.arange(1000) % 10
  np.testing.assert_array_equal(objective.drop_condition(jax.random.key(1), labels, 0.0, 10), labels)
  assert np.all(np.asarray(objective.drop_condition(jax.random.key(1), labels, 1.0, 10)) == 10)


@pytest.fixture(scope='module')
def unet():
  config = tiny_config()
  model = model_lib.from_config(config)
  z = jnp.ones((3, 28, 28, 1))
  params = jax.jit(model.init)(jax.random.key(0), z, jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))
  return config, model, params, z


def test_unet_shape_dtype(unet):
  config, _, params, z = unet
  config.model.dtype = 'bfloat16'
  model = model_lib.from_config(config)
  out = jax.jit(model.apply)(params, z, jnp.array([-5.0, 0.0, 5.0]), jnp.array([0, 3, 10]))
  assert out.shape == z.shape and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert params['params']['class_embed']['embedding'].shape[0] == 11   # 10 classes + ∅


def test_null_embedding_row_is_used(unet):
  _, model, params, z = unet
  # Zero-initialised output layers make ε ≡ 0 at init; perturb params so labels matter.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params)
  lam = jnp.zeros((3,))
  f = jax.jit(lambda p, labels: jnp.sum(model.apply(p, z, lam, labels) ** 2))
  null, cls0 = jnp.full((3,), 10), jnp.zeros((3,), jnp.int32)
  assert not np.allclose(f(params, null), f(params, cls0))
  grad_rows = jax.jit(jax.grad(f))(params, null)['params']['class_embed']['embedding']
  norms = np.linalg.norm(np.asarray(grad_rows), axis=1)
  assert norms[10] > 0 and np.all(norms[:10] == 0)


# Every training test below uses the same tiny config, so each mesh compiles its step once
# (later builds hit the persistent compilation cache).

class Setup(NamedTuple):
  config: Any
  meshes: dict       # device count -> Mesh
  builds: dict       # device count -> train.Built


@pytest.fixture(scope='module')
def built():
  config = tiny_config()
  meshes = {1: sharding.make_mesh({'data': 1, 'fsdp': 1}, jax.devices()[:1]),
            8: sharding.make_mesh({'data': 8, 'fsdp': 1})}
  return Setup(config, meshes, {n: train.build(config, mesh) for n, mesh in meshes.items()})


def _batches(source, config, n):
  it = data.batches(source, seed=config.seed, global_batch_size=config.train.batch_size)
  return [next(it) for _ in range(n)]


def _run_steps(built, n_devices, batches):
  mesh, b = built.meshes[n_devices], built.builds[n_devices]
  state = b.init(jax.random.key(built.config.seed))
  losses = []
  for batch in batches:
    state, metrics = b.step(state, sharding.global_batch(batch, mesh))
    assert int(metrics["nonfinite"]) == 0
    losses.append(float(metrics['loss']))
  return state, losses


def test_training_reduces_loss_on_fashion_mnist(built, fmnist_train):
  config, model = built.config, built.builds[8].model
  held_out = data.load_fashion_mnist('test')
  eval_loss = jax.jit(lambda p: objective.loss_fn(p, model, held_out.images[:256],
                                                 jnp.asarray(held_out.labels[:256]),
                                                 jax.random.key(123), config, train=False))
  state, _ = _run_steps(built, 8, [])
  before = float(eval_loss(state.params))
  state, _ = _run_steps(built, 8, _batches(fmnist_train, config, 60))
  after = float(eval_loss(state.params))
  assert after < 0.6 * before, (before, after)


def test_sharded_step_matches_single_device(built, fmnist_train):
  batches = _batches(fmnist_train, built.config, 3)
  state1, losses1 = _run_steps(built, 1, batches)
  state8, losses8 = _run_steps(built, 8, batches)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_checkpoint_restores_onto_other_meshes(built, tmp_path, fmnist_train):
  config = built.config.copy_and_resolve_references()
  config.mesh.fsdp_min_bytes = 0   # split the tiny model's arrays too on the fsdp=2 mesh
  state, _ = _run_steps(built, 8, _batches(fmnist_train, config, 2))
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, state, config)
  mngr.wait_until_finished()

  for mesh_config, devices in [({'data': 1, 'fsdp': 1}, jax.devices()[:1]),
                               ({'data': 4, 'fsdp': 2}, None)]:
    mesh = sharding.make_mesh(mesh_config, devices)
    abstract = train.build(config, mesh).abstract_state
    restored = checkpoint.restore(checkpoint.manager(str(tmp_path), read_only=True), abstract)
    assert int(restored.step) == 2
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.shape == mesh.shape


def test_resume_continues_step_ema_and_data_order(tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=3, log_every=3)
  straight = train.train(config, str(tmp_path / 'straight'))
  config.train.num_steps = 3
  train.train(config, str(tmp_path / 'resumed'))
  config.train.num_steps = 6
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert int(resumed.step) == int(straight.step) == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed)), jax.tree.leaves(jax.device_get(straight))):
    np.testing.assert_array_equal(a, b)
  # The EMA really moved away from the parameters it averages.
  assert not np.allclose(jax.tree.leaves(resumed.ema_params)[0], jax.tree.leaves(resumed.params)[0])


@pytest.mark.parametrize('grid_at_end, drawn', [(True, [2, 4, 5]), (False, [2, 4])])
def test_training_grids_every_sample_every_steps_and_at_the_end(tmp_path, monkeypatch,
                                                                grid_at_end, drawn):
  steps = []
  monkeypatch.setattr(train, 'write_guidance_grid',
                      lambda pipe, params, workdir, step: steps.append(step))
  config = tiny_config(num_steps=5, sample_every=2, grid_at_end=grid_at_end)
  config.sample.per_class = 1
  train.train(config, str(tmp_path))
  assert steps == drawn
