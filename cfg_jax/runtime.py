"""Process-level set-up that must happen before JAX touches a device, and the stop signal."""
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

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


def setup(*, cpu_devices=None, compilation_cache=DEFAULT_CACHE_DIR, distributed=None,
          coordinator_address=None, num_processes=None, process_id=None):
  """Call first. Expose CPU cores as XLA devices, cache compilations, join a multi-host job.

  cpu_devices: number of CPU devices (default: one per core; only used where CPU is the backend).
  distributed: True/False, or None to read CFG_JAX_DISTRIBUTED / detect SLURM and TPU pods.
  coordinator_address, num_processes, process_id: for clusters JAX cannot detect (several
  processes on one machine, GPU nodes without SLURM); giving an address implies `distributed`.
  On CPU the processes talk through gloo, JAX's default CPU collectives.
  """
  if cpu_devices is None:
    cpu_devices = os.cpu_count() or 1
  if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', cpu_devices)
  if compilation_cache:
    jax.config.update('jax_compilation_cache_dir', compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if coordinator_address or _distributed_requested(distributed):
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


class StopSignal:
  """SIGTERM (a preempted TPU VM, SLURM's time limit, `kill`) asks training to save and stop.

  Every process must stop after the same step, or the others wait forever in a collective.
  With one process a handler records the signal; with several, JAX's preemption service
  (started by jax.distributed.initialize, which catches SIGTERM) agrees on the step.
  """

  def __init__(self):
    self.received = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def reached(self, step):
    """True at the step where every process should save and stop; call at every step."""
    if jax.process_count() > 1:
      self.received = multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
