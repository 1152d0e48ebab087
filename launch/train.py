"""Trains a class-conditional diffusion model with condition dropout (Algorithm 1).

  python launch/train.py --config=configs/fashion_mnist.py --workdir=workdirs/fmnist \
      [--config.train.num_steps=200 --config.train.p_uncond=0.2 ...]

Rerunning the same command in the same workdir resumes from its latest checkpoint.
Multi-host: the same command on every host, with --distributed (or CFG_JAX_DISTRIBUTED=1;
automatic on SLURM and TPU pods), or --coordinator_address=host:port --num_processes=N
--process_id=i where JAX cannot detect the cluster. See docs/SCALING.md.

One run per workdir: a second one is refused while the first lives (a killed one does not count).

Exit status: 0 done; 2 a mistake or failure explained in one line (bad config, missing data,
incompatible or corrupt checkpoint, unwritable or busy workdir, non-finite loss); 75 stopped
by SIGTERM or Ctrl-C after saving a checkpoint (rerun to resume); 130 a second Ctrl-C, which
stops at once without saving.
"""
import sys

from absl import flags
from ml_collections import config_flags

from cfg_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped cleanly before the end; the same command resumes


def main(argv):
  del argv
  cli.setup_runtime()
  from cfg_jax import runtime, train  # pylint: disable=g-import-not-at-top
  cli.quiet_logging()
  config = _CONFIG.value
  stop = runtime.StopSignal()   # from now on, not only once the loop runs
  try:
    state = train.train(config, _WORKDIR.value, stop)
  except train.USER_ERRORS as e:
    cli.fail(str(e))
  step = int(state.step)
  if step < config.train.num_steps:
    sys.stderr.write(f'stopped by {stop.received} at step {step} of {config.train.num_steps}; the '
                     f'checkpoint is saved in {_WORKDIR.value}. Rerun the same command to '
                     f'resume.\n')
    sys.exit(EXIT_STOPPED)


if __name__ == '__main__':
  cli.run(main, 'stopped at once without saving; rerun the same command to resume from the '
               'last checkpoint')
