"""What every command-line entry point shares: quiet library logs, one-line errors."""
import logging
import sys

from absl import flags, logging as absl_logging

CPU_DEVICES = flags.DEFINE_integer('cpu_devices', None,
                                   'CPU devices to expose (default: one per core).')


def quiet_logging():
  """Libraries log warnings only; cfg_jax logs progress at INFO."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('cfg_jax').setLevel(logging.INFO)


def fail(message, code=2):
  """Ends the program with one line on stderr: what is wrong and what to do."""
  sys.stderr.write(f'error: {message}\n')
  sys.exit(code)
