"""Writes tests/data/class_reference.npz: the class-label path's parameters, output, train step
and samples on the tiny config, as computed before text conditioning existed (main c9343e2).

  PYTHONPATH=$PWD python tests/make_class_reference.py

tests/test_text_conditioning.py checks that today's code reproduces every value bit for bit.
Rerun only on purpose (a deliberate change of the class path), and say so in the commit.
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


def compute():
  config = tiny_config()
  x = inputs()
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 1}, jax.devices()[:1])
  built = train.build(config, mesh)
  state = built.init(jax.random.key(config.seed))
  init = leaf_digests(state.params)
  out = built.model.apply({'params': state.params}, x['z'], x['logsnr'], x['labels'])
  batch = {'image': x['images'], 'label': x['batch_labels']}
  new_state, metrics = built.step(state, sharding.global_batch(batch, mesh))   # donates state
  pipe = inference.Pipeline(config, new_state.params, mesh, model=built.model)
  samples = pipe.sample(x['sample_labels'], x['sample_w'], steps=4, seed=1)
  return dict(init=init, output=np.asarray(out),
              loss=np.asarray(metrics['loss']), stepped=leaf_digests(new_state.params),
              samples=np.asarray(samples))


def main():
  ref = compute()
  arrays = {'output': ref['output'], 'loss': ref['loss'], 'samples': ref['samples']}
  for name in ('init', 'stepped'):
    arrays[f'{name}_paths'] = np.array(sorted(ref[name]))
    arrays[f'{name}_digests'] = np.array([ref[name][k] for k in sorted(ref[name])])
  np.savez(PATH, **arrays)
  print(f'wrote {PATH}')


if __name__ == '__main__':
  main()
