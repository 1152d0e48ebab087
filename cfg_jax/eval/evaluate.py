"""`evaluate_workdir`: a trained workdir's guidance sweep, from checkpoint to files on disk.

The one path that launch/evaluate.py and notebooks/evaluate_checkpoint.ipynb both take:
checkpoint → reference classifier (trained on first use) → real reference (test split) and
real-data floor (train split), both from cached features → the sweep, rewriting metrics.json
after every w → metrics.csv, tradeoff.png, grid.png.
"""
import dataclasses
import math
import os

import jax

from cfg_jax import checkpoint, conditioning, inference, visualize, workdir_lock
from cfg_jax.eval import classifier, features, metrics, report, sweep

# Mistakes and failures a caller reports in one line (CheckpointError, DataError and
# WorkdirBusyError are ValueErrors; FileNotFoundError: no classifier where one was named).
USER_ERRORS = (ValueError, FileNotFoundError)


class EvalError(ValueError):
  """A sweep that cannot run on this machine as asked."""


@dataclasses.dataclass
class Evaluation:
  """What `evaluate_workdir` measured (as in its metrics.json) and where it wrote it."""
  rows: list          # one per w
  real: dict          # the real-data floor: real train images scored like samples
  differences: list   # FD-clf between consecutive w, with paired bootstrap errors
  settings: dict
  extractor: str      # what measured the features
  reference: str
  out: str
  files: tuple        # what was written in `out`

  def table(self):
    return report.format_table(self.rows, self.real)

  def summary(self):
    """The table, the FD-clf differences, what measured them and what was written."""
    lines = [self.table()]
    if self.differences:
      lines.append(report.format_differences(self.differences))
    lines += [f'features: {self.extractor}; reference: {self.reference}; '
              f'{self.settings["num_samples_per_w"]} samples per w',
              f'wrote {self.out}/' + ', '.join(self.files)]
    return '\n'.join(lines)


def _check_size(pipe, ws, num_samples, steps, progress):
  """Says the work up front, and refuses a sweep whose samples for one w (held in memory, as
  float32 and uint8, to be scored together) would not fit in half of this machine's memory."""
  rows = sum(num_samples * steps * (1 if w == 0 or pipe.distilled else 2) for w in ws)
  need = num_samples * math.prod(pipe.shape) * 5
  memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  if progress:
    print(f'{num_samples:,} samples at each of {len(ws)} w, {steps} steps: {rows:,} network rows; '
          f'{need / 2**20:,.0f} MiB of samples in memory per w')
  if need >= memory / 2:
    raise EvalError(f'--num_samples={num_samples} holds {need / 2**30:.1f} GiB of samples per w '
                    f'in memory, this machine has {memory / 2**30:.1f} GiB; lower --num_samples')


def evaluate_workdir(workdir, ws, *, num_samples=2000, step=None, steps=None, method=None,
                     v=None, seed=0, batch_size=256, out=None, classifier_dir=None,
                     classifier_steps=2400, grid_per_class=6, settings=None, progress=True):
  """Samples `num_samples` class-balanced images at each w in `ws` from `workdir`'s checkpoint
  `step` (default: the latest) and scores them; writes into `out` (default WORKDIR/eval):
    metrics.json   one row per w, the real-data row, the settings, extractor and hardware;
    metrics.csv    the same rows;
    tradeoff.png   FD-clf against score and class agreement, precision against recall;
    grid.png       `grid_per_class` samples per class at each w (0: none);
    samples_w*.npz the samples, so a rerun of an interrupted sweep skips finished w values.

  steps, method, v: the sampler (default: the config's); settings: guidance and time-grid
  overrides (`Pipeline.sample`'s keywords). The classifier in `classifier_dir` (default: the
  data set's cache folder) is trained for `classifier_steps` first if missing. Raises one of
  USER_ERRORS for a request that cannot run; one sweep per `out` folder at a time.
  """
  settings = dict(settings or {})
  out = out or os.path.join(workdir, 'eval')
  pipe = inference.load(workdir, step=step)
  if not conditioning.is_labels_only(pipe.config):
    kinds = ' + '.join(pipe.config.condition.kinds)
    raise EvalError(f'{workdir} is conditioned on {kinds}, not class labels alone; '
                    f'evaluate text models with launch/evaluate_text.py')
  ckpt_step = step if step is not None else checkpoint.manager(workdir, read_only=True).latest_step()
  sampler = pipe.sampler_settings(steps, method, v, settings.get('grid'),
                                  settings.get('logsnr_range'))
  _check_size(pipe, ws, num_samples, sampler.steps, progress)
  os.makedirs(out, exist_ok=True)
  with workdir_lock.held(out):   # one sweep per folder: they share samples_w*.npz
    return _evaluate(pipe, ws, ckpt_step, out, num_samples=num_samples, sampler=sampler,
                     seed=seed, batch_size=batch_size, settings=settings,
                     classifier_dir=classifier_dir, classifier_steps=classifier_steps,
                     grid_per_class=grid_per_class, progress=progress, workdir=workdir)


def _evaluate(pipe, ws, ckpt_step, out, *, num_samples, sampler, seed, batch_size,
              settings, classifier_dir, classifier_steps, grid_per_class, progress, workdir):
  config, k = pipe.config, pipe.num_classes
  dc = config.data

  # --- Extractor, the real reference (test split) and the floor (train split) ----------------
  clf_dir = classifier_dir or classifier.default_dir(dc.name)
  extractor = classifier.ensure_extractor(clf_dir, dc, steps=classifier_steps, progress=progress)
  test_feats, _, _ = features.real_features(extractor, clf_dir, dc, dc.eval_split, progress)
  reference = metrics.Reference(test_feats, f'{dc.name} {dc.eval_split} ({len(test_feats)} images)')
  train_feats, train_logits, train_labels = features.real_features(extractor, clf_dir, dc,
                                                                   dc.train_split, progress)
  real = metrics.real_floor(train_feats, train_logits, train_labels, reference, num_samples,
                            num_classes=k, extractor=extractor.name, seed=seed)

  # --- Sweep, rewriting metrics.json after every w --------------------------------------------
  dev = jax.devices()[0]
  run = {
      'workdir': os.path.abspath(workdir), 'checkpoint_step': ckpt_step,
      'p_uncond': config.train.p_uncond, 'guidance': list(ws), 'num_samples_per_w': num_samples,
      **sampler.record(), 'clip': config.sample.clip, 'seed': seed, 'ema': True,
      'sample_settings': settings,
      'hardware': f'{jax.device_count()} x {dev.device_kind} ({dev.platform})',
  }
  header = {'settings': run, 'extractor': dict(extractor.meta, description=extractor.name),
            'reference': reference.name,
            'real': dict(real, note=f'{real["num_samples"]} real {dc.train_split} images '
                                    'scored like samples: the floor / ceiling of every metric')}
  done = []

  def write(row):
    done.append(row)
    report.write_json(os.path.join(out, 'metrics.json'), dict(header, rows=done))

  rows = sweep.sweep(pipe, extractor, reference, ws, num_samples, directory=out,
                     steps=sampler.steps, method=sampler.method, v=sampler.v, seed=seed,
                     batch_size=batch_size,
                     tag=f'{run["workdir"]}@{ckpt_step}', settings=settings, on_row=write,
                     progress=progress)

  # --- Table, plot and grid -------------------------------------------------------------------
  diffs = metrics.fd_differences(rows)
  report.write_json(os.path.join(out, 'metrics.json'), dict(header, rows=rows, fd_differences=diffs))
  report.write_csv(os.path.join(out, 'metrics.csv'), rows, real)
  title = (f'{os.path.basename(os.path.normpath(workdir))} step {ckpt_step}, '
           f'p_uncond={config.train.p_uncond}, {sampler.method} {sampler.steps} steps')
  report.plot_tradeoff(rows, os.path.join(out, 'tradeoff.png'), real, title)
  files = ('metrics.json', 'metrics.csv', 'tradeoff.png')
  per = min(grid_per_class, num_samples // k)
  if per:
    visualize.guidance_grid(sweep.grid_samples(out, ws, k, per), ws, visualize.class_names(config),
                            os.path.join(out, 'grid.png'), title)
    files += ('grid.png',)
  return Evaluation(rows=rows, real=real, differences=diffs, settings=run,
                    extractor=extractor.name, reference=reference.name, out=out, files=files)
