"""cfg_jax: classifier-free diffusion guidance (Ho & Salimans 2022) in JAX/Flax."""
__version__ = '0.1.0'


def load(workdir, step=None, devices=None):
  """Loads a trained workdir for sampling; see `cfg_jax.inference.load`."""
  from cfg_jax import inference  # pylint: disable=g-import-not-at-top
  return inference.load(workdir, step, devices)
