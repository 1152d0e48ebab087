"""Every test sees 8 simulated CPU devices and shares a persistent compilation cache."""
import importlib.util
import os

import jax
import pytest

from cfg_jax import runtime

runtime.add_cpu_xla_flags()   # as runtime.setup() does
jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('CFG_JAX_TEST_CACHE', os.path.expanduser('~/.cache/cfg_jax/xla-tests')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from cfg_jax import data  # noqa: E402  (after the device count is set)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
  """configs/fashion_mnist.py:tiny with training grids off and `train` overrides."""
  spec = importlib.util.spec_from_file_location('fmnist_config', os.path.join(ROOT, 'configs', 'fashion_mnist.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.sample.per_class = 0
  config.train.update(train)
  return config


@pytest.fixture(scope='session')
def fmnist_train():
  return data.load_fashion_mnist('train')
