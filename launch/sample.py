"""Draws a guidance sweep from a trained workdir with its EMA parameters (Algorithm 2).

  python launch/sample.py --workdir=workdirs/fmnist --guidance=0,0.3,1,4 --per_class=8 \
      --steps=64 --sampler=ancestral --out=workdirs/fmnist/samples [--step=2000]
  python launch/sample.py --workdir=workdirs/fmnist --guidance=2 --interval_sigma=0.28,1.61
  python launch/sample.py --workdir=workdirs/fmnist_text --guidance=0,1,3 \
      --prompt="a dark ankle boot" --prompt="a wide pale coat" --negative_prompt=textured

Without --guidance: the w a sweep chose for the checkpoint (launch/evaluate.py --choose), else
the config's sample.guidance; without --per_class the config's sample.per_class (the tiny
config's grid is as small as its model). Guidance variants and the time grid: --guidance_rule,
--interval, --rescale, --threshold, --apg_*, --w_schedule, --grid (README, "Guidance variants").

A text-conditioned model (configs/fashion_mnist.py:text) samples each --prompt (default: the
plainest prompt of each class, "a t-shirt", …); --negative_prompt takes the place of the empty
prompt in the guided rule, ε̃ = (1 + w)·ε(z, c) − w·ε(z, c_neg).

Writes OUT/grid.png (rows = classes or prompts, column blocks = w; at most 16 samples per row
and w) and OUT/samples.npz (images in [−1, 1], labels, w; prompts for text models). The whole
sweep (every w, every row) runs as batched calls of one compiled sampler; the images go to disk
call by call, so a request larger than memory only needs the disk space, which is checked (with
the size and the work) before the first call. OUT is checked to be writable before anything is computed.
"""
import math
import os
import shutil
import zipfile

from absl import flags

from cfg_jax import cli, sampling_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Trained workdir.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to sample (default: the latest).')
_GUIDANCE = flags.DEFINE_list('guidance', None, 'Values of w (paper convention; default: the w '
                              "chosen for this checkpoint by a sweep, else the config's "
                              'sample.guidance).')
_PER_CLASS = flags.DEFINE_integer('per_class', None,
                                  "Samples per class (or prompt) and w (default: the config's "
                                  'sample.per_class).')
_CLASSES = flags.DEFINE_list('classes', None, 'Class indices (default: all).')
_PROMPT = flags.DEFINE_multi_string('prompt', None, 'Text models: a prompt (repeat the flag for '
                                    'more; default: each class\'s plainest prompt).')
_NEGATIVE = flags.DEFINE_string('negative_prompt', None, 'Text models: the prompt guidance '
                                'steers away from, in place of the empty prompt.')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/samples).')
flags.mark_flags_as_required(['workdir'])

GRID_PER_CLASS = 16   # samples per class and w shown in grid.png


class _NpzStream:
  """samples.npz written array by array, the images chunk by chunk (np.load reads it as usual);
  it takes its name only when complete."""

  def __init__(self, path, shape):
    import numpy as np  # pylint: disable=g-import-not-at-top
    self._path, self._tmp = path, path + '.partial'
    self._zip = zipfile.ZipFile(self._tmp, 'w', zipfile.ZIP_DEFLATED, allowZip64=True)
    self._images = self._zip.open('images.npy', 'w', force_zip64=True)
    np.lib.format.write_array_header_2_0(
        self._images, {'descr': '<f4', 'fortran_order': False, 'shape': shape})

  def write(self, images):
    self._images.write(images.astype('<f4', copy=False).tobytes())

  def close(self, **arrays):
    import numpy as np  # pylint: disable=g-import-not-at-top
    self._images.close()
    for name, array in arrays.items():
      with self._zip.open(f'{name}.npy', 'w', force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(array))
    self._zip.close()
    os.replace(self._tmp, self._path)

  def abort(self):
    self._images.close()
    self._zip.close()
    os.remove(self._tmp)


def _check_flags():
  ws = cli.guidance_values(_GUIDANCE.value) if _GUIDANCE.value is not None else None
  cli.require(_PER_CLASS.value is None or _PER_CLASS.value >= 1,
              f'--per_class must be >= 1, got {_PER_CLASS.value}')
  cli.require(_STEP.value is None or _STEP.value >= 0, f'--step must be >= 0, got {_STEP.value}')
  cli.require(not _PROMPT.value or all(p.strip() for p in _PROMPT.value),
              '--prompt must not be empty (leave it out for each class\'s plainest prompt)')
  try:
    classes = [int(c) for c in _CLASSES.value] if _CLASSES.value else None
  except ValueError:
    cli.fail(f'--classes must be integers, got {",".join(_CLASSES.value)!r}')
  try:
    settings = sampling_flags.overrides()
  except sampling_flags.SamplingFlagError as e:
    cli.fail(str(e))
  cli.require(os.path.isdir(_WORKDIR.value),
              f'--workdir={_WORKDIR.value} does not exist; train first with launch/train.py')
  return ws, classes, settings


def _prompts(pipe, classes):
  """The prompts of the rows: --prompt, else each class's plainest; None for a model without
  text (where --prompt and --negative_prompt are mistakes)."""
  from cfg_jax import captions, tokenizer  # pylint: disable=g-import-not-at-top
  kinds = pipe.config.condition.kinds
  cli.require('embedding' not in kinds, 'this model is conditioned on precomputed embeddings, '
              'which launch/sample.py cannot make; sample it with cfg_jax.load(...).sample('
              'embeddings=(values, mask))')
  if 'text' not in kinds:
    cli.require(not _PROMPT.value and _NEGATIVE.value is None,
                '--prompt and --negative_prompt need a text-conditioned model (e.g. '
                'configs/fashion_mnist.py:text); this one is conditioned on class labels')
    return None
  prompts = list(_PROMPT.value) if _PROMPT.value else captions.class_prompts(
      range(pipe.num_classes) if classes is None else classes)
  try:   # too long for the model: say so before any work
    tokenizer.encode(prompts + [_NEGATIVE.value or ''], pipe.config.model.text_max_len)
  except tokenizer.PromptTooLongError as e:
    cli.fail(str(e))
  return prompts


def main(argv):
  del argv
  ws, classes, settings = _check_flags()
  cli.setup_runtime()
  cli.quiet_logging()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  import cfg_jax  # pylint: disable=g-import-not-at-top
  from cfg_jax import checkpoint, visualize  # pylint: disable=g-import-not-at-top

  out = _OUT.value or os.path.join(_WORKDIR.value, 'samples')
  existing = cli.check_writable(out, '--out') if cli.is_main_process() else None
  try:
    pipe = cfg_jax.load(_WORKDIR.value, step=_STEP.value)
  except checkpoint.CheckpointError as e:
    cli.fail(str(e))
  print(pipe.describe())
  k = pipe.num_classes
  prompts = _prompts(pipe, classes)
  classes = list(range(k)) if classes is None else classes
  cli.require(all(0 <= c < k for c in classes), f'--classes must lie in [0, {k}), got {classes}')
  kinds = pipe.config.condition.kinds
  if prompts is not None and 'label' not in kinds:
    classes = list(range(len(prompts)))   # rows are prompts; `labels` only numbers them
  cli.require(prompts is None or len(prompts) == len(classes),
              f'{len(prompts or ())} prompts for {len(classes)} classes: a model conditioned on '
              'labels and text needs one --classes entry per --prompt')

  # One flat batch over (w, class, repeat): every w in the same compiled calls. Without --guidance:
  # the w a sweep chose for this checkpoint (with its settings), else the config's grid of w.
  s, n = pipe.config.sample, _PER_CLASS.value or max(pipe.config.sample.per_class, 1)
  if ws is None and pipe.tuned:
    ws, settings = [pipe.tuned['w']], {**pipe.tuned.get('settings', {}), **settings}
    print(f'w = {ws[0]:g} (chosen for this checkpoint by a sweep: {_WORKDIR.value}/guidance.json)')
  ws = list(s.guidance) if ws is None else ws
  sampler = sampling_flags.sampler_settings(pipe, settings)
  steps, method = sampler.steps, sampler.method
  total = len(ws) * len(classes) * n
  size = total * (math.prod(pipe.shape) * 4 + 8)
  net_rows = total * steps * (1 if pipe.distilled else 2)
  print(f'{total:,} samples ({len(ws)} w x {len(classes)} {"prompts" if prompts else "classes"} '
        f'x {n}), {steps} {method} steps each: {net_rows:,} network rows; samples.npz up to '
        f'{size / 2**20:,.0f} MiB')
  if cli.is_main_process():
    free = shutil.disk_usage(existing).free
    cli.require(size < 0.9 * free, f'{total:,} samples need up to {size / 2**30:.1f} GiB in {out}, '
                f'which has {free / 2**30:.1f} GiB free; lower --per_class or choose another --out')
  w, labels = visualize.grid_inputs(ws, classes, n)
  row_prompts = None if prompts is None else np.asarray(prompts)[
      visualize.grid_inputs(ws, range(len(prompts)), n)[1]]
  if cli.is_main_process():
    os.makedirs(out, exist_ok=True)
  writer = _NpzStream(os.path.join(out, 'samples.npz'), (total,) + pipe.shape) \
      if cli.is_main_process() else None
  shown = min(n, GRID_PER_CLASS)
  grid = []   # the first `shown` repeats of every (w, class)
  chunk = max(sampling_flags.BATCH.value, pipe.mesh.size)
  try:
    for start in tqdm.trange(0, total, chunk, desc='sample', unit='call'):
      stop = min(start + chunk, total)
      x = pipe.sample(labels[start:stop] if 'label' in kinds else None, w[start:stop],
                      prompts=None if prompts is None else row_prompts[start:stop].tolist(),
                      negative_prompts=_NEGATIVE.value, steps=steps, method=method,
                      v=sampler.v, seed=sampling_flags.SEED.value,
                      batch_size=chunk, first_index=start, **settings)
      if writer:
        writer.write(x)
      grid.append(x[np.arange(start, stop) % n < shown])
  except BaseException as e:
    if writer:
      writer.abort()
    if isinstance(e, ValueError):
      cli.fail(str(e))
    raise
  if not writer:
    return
  writer.close(labels=labels, w=w, **({} if prompts is None else {'prompts': row_prompts}))
  names = visualize.class_names(pipe.config)
  null = '∅' if _NEGATIVE.value is None else f'"{_NEGATIVE.value}"'
  rule = 'distilled ε(z,c,w)' if pipe.distilled else f'ε̃ = (1+w)·ε(z,c) − w·ε(z,{null})'
  title = f'{method}, {steps} steps, seed {sampling_flags.SEED.value}; {rule}'
  grid = np.concatenate(grid).reshape((len(ws), len(classes), shown) + pipe.shape)
  rows = prompts if prompts is not None else [names[c] for c in classes]
  visualize.guidance_grid(grid, ws, rows, os.path.join(out, 'grid.png'), title)
  print(f'wrote {out}/grid.png and {out}/samples.npz ({total} samples)')


if __name__ == '__main__':
  cli.run(main, 'nothing was written; rerun to sample again')
