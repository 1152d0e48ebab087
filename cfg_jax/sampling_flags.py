"""Command-line flags for the sampler, the time grid and the guidance variants, shared by
launch/sample.py, launch/evaluate.py and launch/evaluate_text.py.

Each flag left unset keeps the checkpoint config's `sample` setting (the paper's rule unless the
config says otherwise); `overrides()` checks every flag here and returns the grid and guidance
ones given as keyword arguments of `Pipeline.sample`.
"""
import math

from absl import flags

from cfg_jax import guidance, sampling

SAMPLER = flags.DEFINE_enum('sampler', None, sampling.METHODS,
                            f'{", ".join(sampling.METHODS)} (default: the config\'s).')
STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (default: the config\'s).')
VARIANCE_V = flags.DEFINE_float('variance_v', None, 'Ancestral variance interpolation v in '
                                '[0, 1] (default: the config\'s).')
SEED = flags.DEFINE_integer('seed', 0, 'Noise seed (>= 0); an evaluation also draws its real-data '
                            'subsets and prompts from it.')
BATCH = flags.DEFINE_integer('batch_size', 256, 'Samples per network call (memory control).')
_GRID = flags.DEFINE_enum('grid', None, sampling.GRIDS, 'Time grid: cosine (paper: uniform u), '
                          'logsnr (uniform λ), edm (ρ-spacing of σ).')
_GRID_LOGSNR = flags.DEFINE_list('grid_logsnr', None, 'λ_min,λ_max of the time grid.')
_RULE = flags.DEFINE_enum('guidance_rule', None, guidance.COMBINE_RULES,
                          'How the two predictions combine: cfg (paper), apg, cfgpp.')
_INTERVAL = flags.DEFINE_list('interval', None, 'λ_lo,λ_hi: guide only there; elsewhere the '
                              'network runs on the conditional rows alone.')
_INTERVAL_SIGMA = flags.DEFINE_list('interval_sigma', None, 'σ_lo,σ_hi: the same interval in '
                                    "EDM's σ = e^{-λ/2}, (σ_lo, σ_hi].")
_RESCALE = flags.DEFINE_float('rescale', None, 'CFG rescale φ in [0, 1] (0: off).')
_THRESHOLD = flags.DEFINE_float('threshold', None,
                                'Dynamic thresholding percentile p in (0, 1] (0: off).')
_APG_ETA = flags.DEFINE_float('apg_eta', None, 'APG: weight η of the parallel part.')
_APG_NORM = flags.DEFINE_float('apg_norm', None, 'APG: norm threshold r (0: none).')
_APG_MOMENTUM = flags.DEFINE_float('apg_momentum', None, 'APG: momentum β (e.g. -0.5).')
_SCHEDULE = flags.DEFINE_enum('w_schedule', None, guidance.SCHEDULES[:-1],
                              'w along the trajectory: constant (paper), linear, cosine in λ.')


class SamplingFlagError(ValueError):
  """A sampling flag that cannot mean anything."""


def _pair(flag, *, positive=False):
  if flag.value is None:
    return None
  try:
    lo, hi = (float(v) for v in flag.value)
  except ValueError:
    raise SamplingFlagError(f'--{flag.name} must be two numbers low,high, got '
                            f'{",".join(flag.value)!r}') from None
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (positive and lo <= 0):
    raise SamplingFlagError(f'--{flag.name}={lo:g},{hi:g} must be finite with low < high'
                            + (' and low > 0' if positive else ''))
  return (lo, hi)


def _check_run_flags():
  checks = [(STEPS.value is None or STEPS.value >= 2, f'--steps must be >= 2, got {STEPS.value}'),
            (BATCH.value >= 1, f'--batch_size must be >= 1, got {BATCH.value}'),
            (SEED.value >= 0, f'--seed must be >= 0, got {SEED.value}'),
            (VARIANCE_V.value is None or 0.0 <= VARIANCE_V.value <= 1.0,
             f'--variance_v must lie in [0, 1], got {VARIANCE_V.value}')]
  for ok, message in checks:
    if not ok:
      raise SamplingFlagError(message)


def sampler_settings(pipe, settings):
  """The sampler a launcher runs (`inference.SamplerSettings`): the flags where given, else the
  config's; `settings`: the launcher's `overrides()`, for the time grid."""
  return pipe.sampler_settings(STEPS.value, SAMPLER.value, VARIANCE_V.value,
                               settings.get('grid'), settings.get('logsnr_range'))


def overrides():
  """The grid and guidance settings given on the command line; raises SamplingFlagError if any
  flag of this module is out of range."""
  _check_run_flags()
  out = {'rule': _RULE.value, 'schedule': _SCHEDULE.value, 'interval': _pair(_INTERVAL),
         'interval_sigma': _pair(_INTERVAL_SIGMA, positive=True), 'grid': _GRID.value,
         'logsnr_range': _pair(_GRID_LOGSNR)}
  if out['interval'] and out['interval_sigma']:
    raise SamplingFlagError('give --interval (λ) or --interval_sigma (σ), not both')
  ranges = [(_RESCALE, 0.0, 1.0), (_THRESHOLD, 0.0, 1.0), (_APG_NORM, 0.0, math.inf),
            (_APG_ETA, -math.inf, math.inf), (_APG_MOMENTUM, -math.inf, math.inf)]
  for flag, lo, hi in ranges:
    if flag.value is not None:
      if not (math.isfinite(flag.value) and lo <= flag.value <= hi):
        raise SamplingFlagError(f'--{flag.name}={flag.value} must be a finite number in '
                                f'[{lo:g}, {hi:g}]')
      out[flag.name] = flag.value
  return {k: v for k, v in out.items() if v is not None}
