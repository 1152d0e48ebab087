"""Draws a guidance sweep from a trained workdir with its EMA parameters (Algorithm 2).

  python launch/sample.py --workdir=workdirs/fmnist --guidance=0,0.3,1,4 --per_class=8 \
      --steps=64 --sampler=ancestral --out=workdirs/fmnist/samples

Without --guidance or --per_class the grid follows the run's config (config.sample.guidance and
per_class), so the tiny config's grid is as small as its model.

Writes OUT/grid.png (rows = classes, column blocks = w) and OUT/samples.npz (images in [−1, 1],
labels, w). The whole sweep (every w, every class) runs as batched calls of one compiled sampler.
"""
import os

from absl import app, flags

from cfg_jax import cli, runtime

_WORKDIR = flags.DEFINE_string('workdir', None, 'Trained workdir (its latest checkpoint).')
_GUIDANCE = flags.DEFINE_list('guidance', None,
                              "Values of w (paper convention; default: the config's sample.guidance).")
_PER_CLASS = flags.DEFINE_integer('per_class', None,
                                  "Samples per class and w (default: the config's sample.per_class).")
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (default: the config\'s).')
_SAMPLER = flags.DEFINE_string('sampler', None, 'ancestral, ddim or dpmpp2m (default: config).')
_V = flags.DEFINE_float('variance_v', None, 'Ancestral variance interpolation v (default: config).')
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed.')
_CLASSES = flags.DEFINE_list('classes', None, 'Class indices (default: all).')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Samples per network call (memory control).')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/samples).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  try:
    ws = [float(w) for w in _GUIDANCE.value] if _GUIDANCE.value else None
  except ValueError:
    cli.fail(f'--guidance must be numbers separated by commas, got {",".join(_GUIDANCE.value)!r}')
  runtime.setup(cpu_devices=cli.CPU_DEVICES.value)
  cli.quiet_logging()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import cfg_jax  # pylint: disable=g-import-not-at-top
  from cfg_jax import checkpoint, visualize  # pylint: disable=g-import-not-at-top

  try:
    pipe = cfg_jax.load(_WORKDIR.value)
  except checkpoint.CheckpointError as e:
    cli.fail(str(e))
  k = pipe.num_classes
  try:
    classes = [int(c) for c in _CLASSES.value] if _CLASSES.value else list(range(k))
  except ValueError:
    cli.fail(f'--classes must be integers, got {",".join(_CLASSES.value)!r}')
  if any(not 0 <= c < k for c in classes):
    cli.fail(f'--classes must lie in [0, {k}), got {classes}')
  if (_PER_CLASS.value is not None and _PER_CLASS.value < 1) or (
      _STEPS.value is not None and _STEPS.value < 2):
    cli.fail('--per_class must be >= 1 and --steps >= 2')

  # One flat batch over (w, class, repeat): every w in the same compiled calls.
  ws = list(pipe.config.sample.guidance) if ws is None else ws
  n = _PER_CLASS.value or max(pipe.config.sample.per_class, 1)
  w = np.repeat(np.asarray(ws, np.float32), len(classes) * n)
  labels = np.tile(np.repeat(np.asarray(classes, np.int32), n), len(ws))
  try:
    x = pipe.sample(labels, w, steps=_STEPS.value, method=_SAMPLER.value, v=_V.value,
                    seed=_SEED.value, batch_size=_BATCH.value, progress=True)
  except ValueError as e:
    cli.fail(str(e))

  out = _OUT.value or os.path.join(_WORKDIR.value, 'samples')
  os.makedirs(out, exist_ok=True)
  np.savez_compressed(os.path.join(out, 'samples.npz'), images=x, labels=labels, w=w)
  names = visualize.class_names(pipe.config)
  s = pipe.config.sample
  title = (f'{_SAMPLER.value or s.method}, {_STEPS.value or s.steps} steps, seed {_SEED.value}; '
           'ε̃ = (1+w)·ε(z,c) − w·ε(z,∅)')
  visualize.guidance_grid(x.reshape((len(ws), len(classes), n) + x.shape[1:]), ws,
                          [names[c] for c in classes], os.path.join(out, 'grid.png'), title)
  print(f'wrote {out}/grid.png and {out}/samples.npz ({len(x)} samples)')


if __name__ == '__main__':
  app.run(main)
