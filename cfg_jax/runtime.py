"""Process-level set-up that must happen before JAX touches a device, and the stop signal."""
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'cfg_jax', 'xla')

# XLA:CPU hands convolutions and dots to YNNPACK by default; leaving them to XLA's own emitters
# (YNNPACK keeps its reductions) made the default train step 11-15% faster on an idle Intel Xeon
# and, in one run under load, on the AMD EPYC (benchmarks/CPU_SPEED.md). GPU and TPU ignore it.
CPU_XLA_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution,-individual_dot,-dot'}


def add_cpu_xla_flags(environ=os.environ):
  """Adds CPU_XLA_FLAGS to environ['XLA_FLAGS'], except those it already sets; before any
  device is touched (setup() and tests/conftest.py)."""
  xla_flags = environ.get('XLA_FLAGS', '')
  extra = [f'--{name}={value}' for name, value in CPU_XLA_FLAGS.items() if name not in xla_flags]
  environ['XLA_FLAGS'] = ' '.join([xla_flags.strip()] + extra).strip()


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
  XLA_FLAGS gains CPU_XLA_FLAGS, except any it already sets.
  """
  add_cpu_xla_flags()
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
  """SIGTERM (a preempted TPU VM, SLURM's time limit, `kill`) or Ctrl-C asks training to save
  and stop after the current step; a Ctrl-C after either raises KeyboardInterrupt at once.

  Every process must stop after the same step, or the others wait forever in a collective.
  With one process a handler records the signal; with several, JAX's preemption service
  (started by jax.distributed.initialize, which catches SIGTERM) agrees on the step, and
  Ctrl-C is passed on to it as a SIGTERM to this process.
  """

  def __init__(self):
    self.received = None   # the name of the first stop signal, once one arrives
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return
    if jax.process_count() == 1:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.received is not None:   # asked twice: stop now
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.received = self.received or signal.Signals(signum).name
    if signum == signal.SIGINT and jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)   # to the preemption service, which tells the others

  def reached(self, step):
    """True at the step where every process should save and stop; call at every step."""
    if jax.process_count() == 1:
      return self.received is not None
    if not multihost_utils.reached_preemption_sync_point(step):
      return False
    self.received = self.received or 'SIGTERM'   # received by another process
    return True

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
