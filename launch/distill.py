"""Guidance distillation (Meng et al. 2023) of a trained workdir into a w-conditioned student.

  python launch/distill.py --teacher=workdirs/fmnist --workdir=workdirs/fmnist_distilled \
      [--config.w_max=4 --config.steps=17 --config.train.num_steps=1000 ...]
  python launch/distill.py --teacher=workdirs/fmnist_distilled --workdir=workdirs/fmnist_prog \
      --config.stage=progressive [--config.rounds=2]

Stage 1 (guidance) writes a student to WORKDIR; stage 2 (progressive) writes one student per
halving of the DDIM steps to WORKDIR/round_1, round_2, ... Each is a workdir that
launch/sample.py, launch/evaluate.py and cfg_jax.load read; its sampler runs one network row
per sample and step at any w. Rerunning the same command resumes.

Exit status: as launch/train.py: 0 done; 2 a mistake explained in one line (no teacher
checkpoint, a teacher that does not fit the stage or the student being resumed, a w range that
is empty or not finite, bad config, busy workdir, ...); 75 stopped by SIGTERM or Ctrl-C after
saving (rerun to resume); 130 a second Ctrl-C.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

from cfg_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', 'distill.py'), 'Distillation config file (path[:variant]).')
_TEACHER = flags.DEFINE_string('teacher', None, 'The trained workdir to distil (stage 1), or a '
                               'distilled student (stage 2).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the student(s) go.')
flags.mark_flags_as_required(['teacher', 'workdir'])

EXIT_STOPPED = 75


def main(argv):
  del argv
  cli.setup_runtime()
  from cfg_jax import distill_train, runtime, train  # pylint: disable=g-import-not-at-top
  cli.quiet_logging()
  stop = runtime.StopSignal()
  try:
    result = distill_train.run(_CONFIG.value, _TEACHER.value, _WORKDIR.value, stop)
  except train.USER_ERRORS as e:
    cli.fail(str(e))
  step = int(result.state.step)
  if not result.finished:
    sys.stderr.write(f'stopped by {stop.received} at step {step} of {result.num_steps} in '
                     f'{result.workdir}; the checkpoint is saved. Rerun the same command to '
                     f'resume.\n')
    sys.exit(EXIT_STOPPED)
  print(f'distilled student in {result.workdir}: sample it with launch/sample.py '
        f'--workdir={result.workdir}')


if __name__ == '__main__':
  cli.run(main, 'stopped at once without saving; rerun the same command to resume from the '
               'last checkpoint')
