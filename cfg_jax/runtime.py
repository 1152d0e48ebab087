"""Process-level set-up that must happen before JAX touches a device."""
import os

import jax

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'cfg_jax', 'xla')


def _distributed_requested(flag):
  if flag is not None:
    return flag
  if os.environ.get('CFG_JAX_DISTRIBUTED', '').lower() in ('1', 'true', 'yes'):
    return True
  # Auto-detect the environments where jax.distributed.initialize() finds its own settings.
  slurm_multi = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  tpu_pod = bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
  return slurm_multi or tpu_pod


def setup(*, cpu_devices=None, compilation_cache=DEFAULT_CACHE_DIR, distributed=None):
  """Call first. Expose CPU cores as XLA devices, cache compilations, join a multi-host job.

  cpu_devices: number of CPU devices (default: one per core; only used where CPU is the backend).
  distributed: True/False, or None to read CFG_JAX_DISTRIBUTED / detect SLURM and TPU pods.
  """
  if cpu_devices is None:
    cpu_devices = os.cpu_count() or 1
  if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', cpu_devices)
  if compilation_cache:
    jax.config.update('jax_compilation_cache_dir', compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if _distributed_requested(distributed):
    jax.distributed.initialize()
