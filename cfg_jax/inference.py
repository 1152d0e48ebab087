"""Sampling from a trained U-Net: `load(workdir)` → `Pipeline.sample(labels, w, ...)`.

Restores only the EMA parameters and the config, onto whatever devices are present (a TPU
slice, one GPU, or the CPU of a notebook). Samples are split over the devices of a data mesh;
a batch that does not divide by the device count is padded and the padding dropped.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from cfg_jax import checkpoint, diffusion, model as model_lib, sampling, sharding


def eps_fn_for(model, params, prediction='eps'):
  """The ε(z, λ, labels) function the samplers consume, for an ε- or v-prediction U-Net."""
  def eps_fn(z, logsnr, labels):
    out = model.apply({'params': params}, z, logsnr, labels)
    return out if prediction == 'eps' else diffusion.eps_from_v(z, out, logsnr)
  return eps_fn


@dataclasses.dataclass
class Pipeline:
  """A model, its (EMA) parameters and a mesh; `sample` draws guided samples."""
  config: Any
  params: Any
  mesh: jax.sharding.Mesh
  model: Any = None

  def __post_init__(self):
    self.model = self.model or model_lib.from_config(self.config)
    self.num_classes = self.config.data.num_classes
    size = self.config.data.pad_to or self.config.data.image_size
    self.shape = (size, size, self.config.data.channels)
    self.set_params(self.params)
    self._sample_batch = jax.jit(self._sample_batch_impl,
                                 static_argnames=('method', 'clip', 'guided'))

  def set_params(self, params):
    """Swaps in new parameters (e.g. the EMA during training) without recompiling."""
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  def _sample_batch_impl(self, params, labels, w, indices, key, steps, v, *, method, clip, guided):
    d = self.config.diffusion
    return sampling.sample(
        eps_fn_for(self.model, params, d.prediction), labels, w if guided else None, key,
        shape=self.shape, null_label=self.num_classes, steps=steps, method=method, v=v,
        clip=clip, indices=indices, logsnr_min=d.logsnr_min, logsnr_max=d.logsnr_max)

  def sample(self, labels, w=0.0, *, steps=None, method=None, seed=0, v=None, clip=None,
             batch_size=256, progress=False, first_index=0):
    """Samples for `labels` (N,) at guidance w (scalar, (N,), or None for the unguided model).

    Returns float32 images (N, H, W, C) in the data range [−1, 1] (when clipped). Sample i
    depends only on (seed, first_index + i, label_i, w_i), never on `batch_size` or the device
    count, so a long request drawn in chunks (first_index = the chunk's start) is the same.
    """
    s = self.config.sample
    steps, method = steps or s.steps, method or s.method
    v, clip = s.v if v is None else v, s.clip if clip is None else clip
    if method not in sampling.METHODS:
      raise ValueError(f'unknown sampler {method!r}; choose one of {", ".join(sampling.METHODS)}')
    labels = np.asarray(labels, np.int32).reshape(-1)
    bad = labels[(labels < 0) | (labels > self.num_classes)]
    if bad.size:
      raise ValueError(f'label {bad[0]} is outside [0, {self.num_classes}] '
                       f'({self.num_classes} is the null label)')
    n = labels.shape[0]
    guided = w is not None
    w = np.broadcast_to(np.asarray(0.0 if w is None else w, np.float32), (n,))
    n_dev = self.mesh.size
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
    batch = sharding.batch_sharding(self.mesh)
    key = jax.random.key(seed)
    out = []
    for start in tqdm.trange(0, n, batch_size, disable=not progress, desc='sample', unit='batch'):
      stop = min(start + batch_size, n)
      pad = -(stop - start) % n_dev
      put = lambda a: jax.device_put(np.pad(a[start:stop], (0, pad), mode='edge'), batch)
      x = self._sample_batch(self.params, put(labels), put(w), put(np.arange(first_index, first_index + n)), key,
                             steps, v, method=method, clip=clip, guided=guided)
      out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True))[:stop - start])
    return np.concatenate(out) if out else np.zeros((0,) + self.shape, np.float32)


def load(workdir, step=None, devices=None):
  """A Pipeline with the EMA parameters of `workdir`'s latest (or given) checkpoint."""
  mngr = checkpoint.manager(workdir, read_only=True)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise checkpoint.CheckpointError(f'no checkpoint in {checkpoint.checkpoint_dir(workdir)}; '
                                     'train first with launch/train.py')
  if step is not None and step not in steps:
    raise checkpoint.CheckpointError(
        f'no checkpoint at step {step} in {checkpoint.checkpoint_dir(workdir)}; it holds steps '
        f'{", ".join(map(str, steps))}')
  config = checkpoint.restore_config(mngr, step)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1}, devices)
  model = model_lib.from_config(config)
  size = config.data.pad_to or config.data.image_size
  init = functools.partial(model.init, z=jnp.zeros((1, size, size, config.data.channels)),
                           logsnr=jnp.zeros((1,)), labels=jnp.zeros((1,), jnp.int32))
  abstract = jax.eval_shape(init, jax.random.key(0))['params']
  replicated = sharding.replicated(mesh)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          abstract)
  params = checkpoint.restore_ema_params(mngr, abstract, step)
  return Pipeline(config=config, params=params, mesh=mesh, model=model)
