"""Writes tests/data/class_reference.npz: the class-label path's parameters, output, train steps
and samples on the tiny config, as computed before text conditioning existed (main c9343e2).

  git archive c9343e2 | tar -x -C /tmp/main_src
  cp cfg_jax/runtime.py /tmp/main_src/cfg_jax/   # today's conftest needs it; it sets only flags
  PYTHONPATH=/tmp/main_src:$PWD/tests python tests/make_class_reference.py

tests/test_text_conditioning.py checks that today's code reproduces the initial parameters bit
for bit and everything computed from them to float32 rounding (XLA's rounding differs between
CPUs). Rerun only on purpose (a deliberate change of the class path), and say so in the commit.
"""
import hashlib
import os

import jax

jax.config.update('jax_num_cpu_devices', 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cfg_jax import inference, sharding, train  # noqa: E402
from conftest import tiny_config  # noqa: E402

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'class_reference.npz')


def inputs():
  """The fixed inputs every reference value is computed from."""
  rng = np.random.default_rng(0)
  return dict(z=rng.standard_normal((4, 28, 28, 1)).astype(np.float32),
              logsnr=np.float32([-5.0, 0.0, 3.0, 10.0]), labels=np.int32([0, 3, 9, 10]),
              images=rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
              batch_labels=rng.integers(0, 10, 16).astype(np.int32),
              sample_labels=np.int32([1, 5, 7, 2]), sample_w=np.float32([0.0, 1.0, 2.0, 4.0]))


def leaf_digests(tree):
  """{path: sha256 of the leaf's bytes}, for bit-for-bit comparison of parameter trees."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): hashlib.sha256(np.asarray(x).tobytes()).hexdigest()
          for p, x in flat}


def perturbed(params, scale=0.02):
  """Fixed non-zero parameters: the U-Net's zero-initialised output layers would make every
  output 0 and hide any change behind them."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(123), len(leaves))
  return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype)
                                   for p, k in zip(leaves, keys)])


def compute():
  """init: parameter digests at init; output: the perturbed network on fixed inputs; samples:
  the perturbed network through the guided sampler; loss and stepped: three train steps from the
  perturbed parameters (the first has learning rate 0 in warm-up)."""
  config = tiny_config()
  if 'norm_groups' in config.model:   # added after c9343e2, whose GroupNorms had gcd(width, 32)
    config.model.norm_groups = 32
  config.diffusion.prediction = 'eps'   # the Fashion-MNIST configs' until they took v (session 12)
  config.sample.update(method='dpmpp2m', grid='edm', logsnr_min=-8.764,   # and their sampler
                       logsnr_max=12.43)                                  # until session 14
  x = inputs()
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 1}, jax.devices()[:1])
  built = train.build(config, mesh)
  state = built.init(jax.random.key(config.seed))
  init = leaf_digests(state.params)
  params = perturbed(state.params)
  out = built.model.apply({'params': params}, x['z'], x['logsnr'], x['labels'])
  pipe = inference.Pipeline(config, params, mesh, model=built.model)
  samples = pipe.sample(x['sample_labels'], x['sample_w'], steps=4, seed=1)
  batch = sharding.global_batch({'image': x['images'], 'label': x['batch_labels']}, mesh)
  state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
  losses = []
  for _ in range(3):
    state, metrics = built.step(state, batch)   # donates the old state
    losses.append(np.asarray(metrics['loss']))
  leaves = {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  return dict(init=init, output=np.asarray(out), loss=np.stack(losses),
              stepped_paths=np.array(sorted(leaves)),
              stepped=np.concatenate([leaves[k].ravel() for k in sorted(leaves)]),
              samples=np.asarray(samples))


def main():
  ref = compute()
  arrays = {k: ref[k] for k in ('output', 'loss', 'samples', 'stepped_paths', 'stepped')}
  arrays['init_paths'] = np.array(sorted(ref['init']))
  arrays['init_digests'] = np.array([ref['init'][k] for k in sorted(ref['init'])])
  np.savez_compressed(PATH, **arrays)
  print(f'wrote {PATH}')


if __name__ == '__main__':
  main()
