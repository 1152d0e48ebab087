"""The device mesh and how arrays lie on it.

Mesh axes ('data', 'fsdp'). The batch is split over both axes. Parameters and optimizer state
are replicated, or with `fsdp > 1` each array of at least `mesh.fsdp_min_bytes` is split along
its largest dimension that the fsdp axis divides (ZeRO-3 style); XLA inserts the all-gathers.
Smaller arrays (biases, norms, embeddings of small models) stay replicated, as in big_vision:
sharding them saves almost no memory and costs one all-gather each per step.
"""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from cfg_jax import config_lib

BATCH_AXES = ('data', 'fsdp')


def make_mesh(mesh_config, devices=None):
  """A ('data', 'fsdp') mesh over `devices` (all by default); -1 takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp = mesh_config.get('data', -1), mesh_config.get('fsdp', 1)
  n = len(devices)
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n:
    raise config_lib.ConfigError(
        f'config.mesh data={data} x fsdp={fsdp} does not match the {n} devices present; '
        f'set --config.mesh.fsdp to a divisor of {n} and --config.mesh.data=-1')
  # Auto axes: sharding is propagated by XLA (explicit axes break linen's Embed).
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def batch_sharding(mesh):
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, nbytes, fsdp_size, min_bytes):
  if fsdp_size > 1 and nbytes >= min_bytes:
    for dim in np.argsort(shape)[::-1]:
      if shape[dim] % fsdp_size == 0 and shape[dim] >= fsdp_size:
        spec = [None] * len(shape)
        spec[dim] = 'fsdp'
        return P(*spec)
  return P()


def state_shardings(mesh, abstract_tree, min_bytes=0):
  """NamedShardings for a pytree of parameters or optimizer state: replicated, or FSDP for
  the arrays of at least `min_bytes` (config.mesh.fsdp_min_bytes)."""
  fsdp_size = mesh.shape['fsdp']
  spec = lambda x: _fsdp_spec(x.shape, x.size * x.dtype.itemsize, fsdp_size, min_bytes)
  return jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), abstract_tree)


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` laid out as `shardings` (one sharding for every leaf, or a
  matching tree of them): the targets of restores and ahead-of-time compilation."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def abstract_output(fn, *args, shardings):
  """The abstract output of fn(*args) (jax.eval_shape: nothing runs or is allocated) laid out as
  `shardings`: one sharding, a matching tree, or a function of the abstract output giving one."""
  tree = jax.eval_shape(fn, *args)
  return abstract(tree, shardings(tree) if callable(shardings) else shardings)


def global_batch(local_batch, mesh):
  """Turns this process's slice of the batch (numpy) into one global, sharded jax.Array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def check_divisible(global_batch_size, mesh):
  """The batch must split evenly over processes and devices; say which and how."""
  n_dev, n_proc = mesh.size, jax.process_count()
  if global_batch_size % n_dev or global_batch_size % n_proc:
    raise config_lib.ConfigError(
        f'config.train.batch_size={global_batch_size} does not divide over {n_dev} devices '
        f'in {n_proc} process(es); use a multiple of {n_dev}')
