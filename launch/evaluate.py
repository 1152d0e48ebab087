"""Fidelity and diversity of a trained workdir across guidance strength w.

  python launch/evaluate.py --workdir=workdirs/fmnist --guidance=0,0.1,0.2,0.3,0.5,1,2,4 \
      --num_samples=2000 --steps=24 --out=workdirs/fmnist/eval

Samples N class-balanced images per w (sample i uses the same noise at every w), measures them in
the reference classifier's feature space (trained automatically on first use, a few CPU
minutes) against the real test split, and writes to OUT:
  metrics.json   one row per w (FD-clf, score, class agreement, precision, recall), the real-data
                 row (N real train images: the floor), the settings, extractor and hardware;
  metrics.csv    the same rows;
  tradeoff.png   FD-clf against score and class agreement, precision against recall, per w;
  grid.png       --grid_per_class samples per class at each w;
  samples_w*.npz the samples, so a rerun of an interrupted sweep skips finished w values.
OUT is checked to be writable before anything is computed. Runs in one process (one host).
The work is `cfg_jax.eval.evaluate_workdir`, which notebooks/evaluate_checkpoint.ipynb calls too.

Guidance variants and the time grid take the flags of launch/sample.py (--guidance_rule,
--interval, --rescale, --threshold, --apg_*, --w_schedule, --grid, --grid_logsnr). --choose
writes the w with the lowest FD-clf (or, with --max_fd, the highest class agreement within that
FD-clf) and the settings used to WORKDIR/guidance.json, which cfg_jax.load and
launch/sample.py then use when no w is given.
"""
import math
import os

from absl import flags

from cfg_jax import cli, sampling_flags

DEFAULT_GUIDANCE = ['0', '0.1', '0.2', '0.3', '0.5', '1', '2', '4']

_WORKDIR = flags.DEFINE_string('workdir', None, 'Trained workdir.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
_GUIDANCE = flags.DEFINE_list('guidance', DEFAULT_GUIDANCE, 'Values of w (paper convention).')
_NUM = flags.DEFINE_integer('num_samples', 2000, 'Samples per w (classes balanced).')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/eval).')
_CLASSIFIER = flags.DEFINE_string('classifier_dir', None, 'Reference classifier (default: '
                                  '~/.cache/cfg_jax/classifiers/<data set>; trained if missing).')
_CLASSIFIER_STEPS = flags.DEFINE_integer('classifier_steps', 2400,
                                         'Training steps if the classifier must be trained.')
_GRID = flags.DEFINE_integer('grid_per_class', 6, 'Samples per class and w in grid.png (0: none).')
_CHOOSE = flags.DEFINE_bool('choose', False, 'Write the chosen w to WORKDIR/guidance.json.')
_MAX_FD = flags.DEFINE_float('max_fd', None, 'With --choose: the highest class agreement with '
                             'FD-clf <= this, instead of the lowest FD-clf.')
flags.mark_flags_as_required(['workdir'])


def _check_flags():
  ws = cli.guidance_values(_GUIDANCE.value)
  cli.require(_NUM.value >= 20, f'--num_samples must be >= 20 (10 score splits, k-NN with '
                                f'k = 3), got {_NUM.value}')
  cli.require(_GRID.value >= 0, f'--grid_per_class must be >= 0, got {_GRID.value}')
  cli.require(_STEP.value is None or _STEP.value >= 0, f'--step must be >= 0, got {_STEP.value}')
  cli.require(_CLASSIFIER_STEPS.value >= 1,
              f'--classifier_steps must be >= 1, got {_CLASSIFIER_STEPS.value}')
  cli.require(os.path.isdir(_WORKDIR.value),
              f'--workdir={_WORKDIR.value} does not exist; train first with launch/train.py')
  cli.require(_MAX_FD.value is None or (math.isfinite(_MAX_FD.value) and _MAX_FD.value > 0),
              f'--max_fd must be a finite number > 0, got {_MAX_FD.value}')
  cli.require(_MAX_FD.value is None or _CHOOSE.value, '--max_fd goes with --choose')
  if _CHOOSE.value:
    cli.check_writable(_WORKDIR.value, '--workdir')
  try:
    return ws, sampling_flags.overrides()
  except sampling_flags.SamplingFlagError as e:
    cli.fail(str(e))


def main(argv):
  del argv
  ws, sample_settings = _check_flags()
  cli.setup_runtime(single_process=True)
  cli.quiet_logging()
  from cfg_jax import eval as evaluation  # pylint: disable=g-import-not-at-top

  out = _OUT.value or os.path.join(_WORKDIR.value, 'eval')
  cli.check_writable(out, '--out')
  if _CLASSIFIER.value:
    cli.check_writable(_CLASSIFIER.value, '--classifier_dir')
  try:
    result = evaluation.evaluate_workdir(
        _WORKDIR.value, ws, num_samples=_NUM.value, step=_STEP.value,
        steps=sampling_flags.STEPS.value, method=sampling_flags.SAMPLER.value,
        v=sampling_flags.VARIANCE_V.value, seed=sampling_flags.SEED.value,
        batch_size=sampling_flags.BATCH.value, out=out, classifier_dir=_CLASSIFIER.value,
        classifier_steps=_CLASSIFIER_STEPS.value, grid_per_class=_GRID.value,
        settings=sample_settings)
  except evaluation.USER_ERRORS as e:
    cli.fail(str(e))
  print(result.summary())
  if _CHOOSE.value:
    _choose(result)


def _choose(result):
  """Writes the w that --choose asks for (and the settings used) to WORKDIR/guidance.json."""
  from cfg_jax import tuning  # pylint: disable=g-import-not-at-top
  try:
    row = tuning.choose(result.rows, max_fd=_MAX_FD.value)
  except ValueError as e:
    cli.fail(str(e))
  criterion = ('lowest FD-clf' if _MAX_FD.value is None
               else f'highest class agreement with FD-clf <= {_MAX_FD.value:g}')
  path = tuning.save_choice(_WORKDIR.value, row, step=result.settings['checkpoint_step'],
                            criterion=criterion, settings=result.settings['sample_settings'])
  print(f'chose w = {row["w"]:g} ({criterion}: FD-clf {row["fd_clf"]:.3f}, class agreement '
        f'{row["class_agreement"]:.3f}); wrote {path}')


if __name__ == '__main__':
  cli.run(main, 'the values of w finished so far are kept in --out; rerun the same command to '
                'go on from there')
