"""Fidelity and diversity of a trained workdir across guidance strength w.

  python launch/evaluate.py --workdir=workdirs/fmnist --guidance=0,0.1,0.2,0.3,0.5,1,2,4 \
      --num_samples=2000 --steps=24 --sampler=dpmpp2m --out=workdirs/fmnist/eval

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
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (default: the config\'s).')
_SAMPLER = flags.DEFINE_string('sampler', None, 'ancestral, ddim or dpmpp2m (default: config).')
_V = flags.DEFINE_float('variance_v', None, 'Ancestral variance interpolation v (default: config).')
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed (and the seed of the real-data subsets).')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Samples per network call (memory control).')
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
  cli.require(_STEPS.value is None or _STEPS.value >= 2, f'--steps must be >= 2, got {_STEPS.value}')
  cli.require(_BATCH.value >= 1, f'--batch_size must be >= 1, got {_BATCH.value}')
  cli.require(_GRID.value >= 0, f'--grid_per_class must be >= 0, got {_GRID.value}')
  cli.require(_SEED.value >= 0, f'--seed must be >= 0, got {_SEED.value}')
  cli.require(_V.value is None or 0.0 <= _V.value <= 1.0,
              f'--variance_v must lie in [0, 1], got {_V.value}')
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
  except sampling_flags.GuidanceFlagError as e:
    cli.fail(str(e))


def main(argv):
  del argv
  ws, sample_settings = _check_flags()
  cli.setup_runtime(single_process=True)
  cli.quiet_logging()
  import cfg_jax  # pylint: disable=g-import-not-at-top
  from cfg_jax import checkpoint, sampling, workdir_lock  # pylint: disable=g-import-not-at-top

  if _SAMPLER.value is not None and _SAMPLER.value not in sampling.METHODS:
    cli.fail(f'--sampler={_SAMPLER.value}: choose one of {", ".join(sampling.METHODS)}')
  out = _OUT.value or os.path.join(_WORKDIR.value, 'eval')
  cli.check_writable(out, '--out')
  if _CLASSIFIER.value:
    cli.check_writable(_CLASSIFIER.value, '--classifier_dir')
  try:
    pipe = cfg_jax.load(_WORKDIR.value, step=_STEP.value)
    ckpt_step = (_STEP.value if _STEP.value is not None
                 else checkpoint.manager(_WORKDIR.value, read_only=True).latest_step())
  except (checkpoint.CheckpointError, FileNotFoundError) as e:
    cli.fail(str(e))
  cli.require(tuple(pipe.config.condition.kinds) == ('label',),
              f'{_WORKDIR.value} is conditioned on {" + ".join(pipe.config.condition.kinds)}, '
              'not class labels alone; evaluate text models with launch/evaluate_text.py')
  _check_size(pipe, ws)
  os.makedirs(out, exist_ok=True)
  try:
    with workdir_lock.held(out):   # one sweep per folder: they share samples_w*.npz
      _evaluate(pipe, ws, ckpt_step, out, sample_settings)
  except workdir_lock.WorkdirBusyError as e:
    cli.fail(str(e))


def _check_size(pipe, ws):
  """Says the work up front, and refuses a sweep whose samples for one w (held in memory, as
  float32 and uint8, to be scored together) would not fit in half of this machine's memory."""
  steps = _STEPS.value or pipe.config.sample.steps
  rows = sum(_NUM.value * steps * (1 if w == 0 else 2) for w in ws)
  need = _NUM.value * math.prod(pipe.shape) * 5
  memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  print(f'{_NUM.value:,} samples at each of {len(ws)} w, {steps} steps: {rows:,} network rows; '
        f'{need / 2**20:,.0f} MiB of samples in memory per w')
  cli.require(need < memory / 2, f'--num_samples={_NUM.value} holds {need / 2**30:.1f} GiB of '
              f'samples per w in memory, this machine has {memory / 2**30:.1f} GiB; lower '
              f'--num_samples')


def _evaluate(pipe, ws, ckpt_step, out, sample_settings):
  """The sweep of `pipe` at each w into `out`, with the reference and the real-data floor."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cfg_jax import classifier, data, metrics, visualize  # pylint: disable=g-import-not-at-top
  config, k = pipe.config, pipe.num_classes
  s = config.sample
  steps, method = _STEPS.value or s.steps, _SAMPLER.value or s.method
  v = s.v if _V.value is None else _V.value

  # --- Extractor and the real reference (test split) --------------------------------------------
  clf_dir = _CLASSIFIER.value or classifier.default_dir(config.data.name)
  try:
    extractor = classifier.ensure_extractor(clf_dir, config.data, steps=_CLASSIFIER_STEPS.value)
    test_feats, _, _ = classifier.real_features(extractor, clf_dir, config.data,
                                                config.data.eval_split)
    train = data.load_source(config.data, config.data.train_split)
  except (data.DataError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  reference = metrics.Reference(test_feats, f'{config.data.name} {config.data.eval_split} '
                                            f'({len(test_feats)} images)')
  train_images, train_labels = classifier.all_images(train)
  real = metrics.real_floor(extractor, train_images, train_labels, reference, _NUM.value,
                            num_classes=k, seed=_SEED.value)

  # --- Sweep, rewriting metrics.json after every w ----------------------------------------------
  dev = jax.devices()[0]
  settings = {
      'workdir': os.path.abspath(_WORKDIR.value), 'checkpoint_step': ckpt_step,
      'p_uncond': config.train.p_uncond, 'guidance': ws, 'num_samples_per_w': _NUM.value,
      'sampler': method, 'steps': steps, 'variance_v': v if method == 'ancestral' else None,
      'clip': s.clip, 'seed': _SEED.value, 'ema': True, 'sample_settings': sample_settings,
      'hardware': f'{jax.device_count()} x {dev.device_kind} ({dev.platform})',
  }
  header = {'settings': settings, 'extractor': dict(extractor.meta, description=extractor.name),
            'reference': reference.name,
            'real': dict(real, note=f'{real["num_samples"]} real {config.data.train_split} images '
                                    'scored like samples: the floor / ceiling of every metric')}
  done = []

  def write(row):
    done.append(row)
    metrics.write_json(os.path.join(out, 'metrics.json'), dict(header, rows=done))

  tag = f'{settings["workdir"]}@{ckpt_step}'
  try:
    rows = metrics.sweep(pipe, extractor, reference, ws, _NUM.value, directory=out, steps=steps,
                         method=method, v=v, seed=_SEED.value, batch_size=_BATCH.value, tag=tag,
                         settings=sample_settings, on_row=write)
  except ValueError as e:
    cli.fail(str(e))

  # --- Table, plot and grid ---------------------------------------------------------------------
  diffs = metrics.fd_differences(rows)
  metrics.write_json(os.path.join(out, 'metrics.json'), dict(header, rows=rows, fd_differences=diffs))
  metrics.write_csv(os.path.join(out, 'metrics.csv'), rows, real)
  title = (f'{os.path.basename(os.path.normpath(_WORKDIR.value))} step {ckpt_step}, '
           f'p_uncond={config.train.p_uncond}, {method} {steps} steps')
  metrics.plot_tradeoff(rows, os.path.join(out, 'tradeoff.png'), real, title)
  if _GRID.value:
    per = min(_GRID.value, _NUM.value // k)
    idx = (np.arange(per)[None, :] * k + np.arange(k)[:, None]).reshape(-1)   # (class, repeat)
    grid = []
    for w in ws:
      images, _ = metrics.load_samples(out, w)
      grid.append(images[idx].astype(np.float32) / 127.5 - 1.0)
    grid = np.stack(grid).reshape((len(ws), k, per) + grid[0].shape[1:])
    visualize.guidance_grid(grid, ws, visualize.class_names(config), os.path.join(out, 'grid.png'),
                            title)
  print(metrics.format_table(rows, real))
  for d in diffs:
    print(f'FD-clf(w={d["w_to"]:g}) - FD-clf(w={d["w_from"]:g}) = {d["difference"]:+.3f} '
          f'(paired bootstrap std {d["paired_std"]:.3f})')
  print(f'features: {extractor.name}; reference: {reference.name}; {_NUM.value} samples per w')
  print(f'wrote {out}/metrics.json, metrics.csv, tradeoff.png' + (', grid.png' if _GRID.value else ''))
  if _CHOOSE.value:
    from cfg_jax import tuning  # pylint: disable=g-import-not-at-top
    try:
      row = tuning.choose(rows, max_fd=_MAX_FD.value)
    except ValueError as e:
      cli.fail(str(e))
    criterion = ('lowest FD-clf' if _MAX_FD.value is None
                 else f'highest class agreement with FD-clf <= {_MAX_FD.value:g}')
    path = tuning.save_choice(_WORKDIR.value, row, step=ckpt_step, criterion=criterion,
                              settings={k: v for k, v in sample_settings.items()})
    print(f'chose w = {row["w"]:g} ({criterion}: FD-clf {row["fd_clf"]:.3f}, class agreement '
          f'{row["class_agreement"]:.3f}); wrote {path}')


if __name__ == '__main__':
  cli.run(main, 'the values of w finished so far are kept in --out; rerun the same command to '
                'go on from there')
