"""Trains a class-conditional diffusion model with condition dropout (Algorithm 1).

  python launch/train.py --config=configs/fashion_mnist.py --workdir=workdirs/fmnist \
      [--config.train.num_steps=200 --config.train.p_uncond=0.2 ...]

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""
from absl import app, flags
from ml_collections import config_flags

from cfg_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', None,
                                 'Call jax.distributed.initialize() (default: auto-detect).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  runtime.setup(cpu_devices=cli.CPU_DEVICES.value, distributed=_DISTRIBUTED.value)
  from cfg_jax import train  # pylint: disable=g-import-not-at-top
  cli.quiet_logging()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
