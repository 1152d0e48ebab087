"""Guided-sampler overhead for a config: is a guided step just one network call on 2B rows?

  python benchmarks/sampler.py --config=configs/fashion_mnist.py [--batch=64] [--json]

Per-step times are differences between runs of `--steps_hi` and `--steps_lo` steps, so fixed
costs (transfer, final x̃) cancel. Random parameters: speed does not depend on training.
Also counts compilations during a 10-value w sweep and collective ops in the program compiled
for an 8-device mesh (both must be 0), and times whole `--steps_hi`-step runs with a guidance
interval covering a fraction f of the steps: the network then runs 2B rows only inside it, so
guided ÷ unguided time per sample should be about 1 + f. Last, whole `Pipeline.sample` calls of
`--steps_hi` steps with each guidance rule at the setting docs/RESULTS.md reports, as time per
sample and ÷ unguided.
"""
import functools
import statistics
import time

from absl import flags
from ml_collections import config_flags

from cfg_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).')
_BATCH = flags.DEFINE_integer('batch', 64, 'Samples per call (B); guided calls run 2B rows.')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Devices for timing (default: one per core).')
_STEPS_LO = flags.DEFINE_integer('steps_lo', 4, 'Short run length.')
_STEPS_HI = flags.DEFINE_integer('steps_hi', 12, 'Long run length.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (median).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of text.')
flags.mark_flags_as_required(['config'])

COLLECTIVES = ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute', 'reduce-scatter')


def _median_time(fn):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn())
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv):
  del argv
  import os  # pylint: disable=g-import-not-at-top
  n_timing = _DEVICES.value or os.cpu_count()
  runtime.setup(cpu_devices=max(8, n_timing))
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cfg_jax import guidance, inference, model as model_lib, sampling, sharding  # pylint: disable=g-import-not-at-top

  config, b = _CONFIG.value, _BATCH.value
  model = model_lib.from_config(config)
  params = jax.jit(functools.partial(model_lib.init_params, model, config))(jax.random.key(0))
  devices = jax.devices()[:n_timing] if jax.devices()[0].platform == 'cpu' else jax.devices()
  pipe = inference.Pipeline(config, params, sharding.make_mesh({'data': -1}, devices), model=model)
  batch = sharding.batch_sharding(pipe.mesh)
  labels = np.arange(b, dtype=np.int32) % pipe.num_classes
  put = lambda a: jax.device_put(a, batch)
  method, s = config.sample.method, config.sample
  grid_args = ((np.float32(s.logsnr_min), np.float32(s.logsnr_max)), np.float32(s.rho))

  def call(p, guide, steps, labels=labels, key=jax.random.key(0), sharded=put):
    return p.sample_batch(p.params, sharded(labels), guide, sharded(np.arange(len(labels))), key,
                          steps, s.v, *grid_args, method=method, clip=s.clip, grid=s.grid)

  def plain(w):
    return guidance.Guidance(w=put(np.asarray(w, np.float32)))

  def run(steps, guided, w=np.ones(b, np.float32), guide=None):
    return lambda: call(pipe, guide or (plain(w) if guided else None), steps)

  # --- Compile time, per-step times ---------------------------------------------------------
  t0 = time.perf_counter()
  jax.block_until_ready(run(_STEPS_LO.value, True)())
  compile_s = time.perf_counter() - t0
  per_step = {}
  for guided in (True, False):
    lo, hi = (_median_time(run(s, guided)) for s in (_STEPS_LO.value, _STEPS_HI.value))
    per_step[guided] = (hi - lo) / (_STEPS_HI.value - _STEPS_LO.value)

  # --- One plain forward on 2B rows ------------------------------------------------------------
  forward = jax.jit(lambda p, z, l, y: model.apply({'params': p}, z, l, y))
  z2 = put(np.random.default_rng(0).normal(size=(2 * b,) + pipe.shape).astype(np.float32))
  forward_s = _median_time(lambda: forward(pipe.params, z2, put(np.zeros(2 * b, np.float32)),
                                           put(np.repeat(labels, 2))))

  # --- Compilations during a 10-value w sweep (w, labels and seed all change) ----------------
  compiles = []
  listener = lambda name, *a, **k: compiles.append(name) if name.endswith('backend_compile_duration') else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  for i, w in enumerate(np.linspace(0, 4, 10)):
    jax.block_until_ready(call(pipe, plain(np.full(b, w)), _STEPS_LO.value,
                               labels=(labels + i) % pipe.num_classes, key=jax.random.key(i)))
  jax.monitoring.unregister_event_duration_listener(listener)

  # --- Guidance interval: whole runs, guided on a fraction f of the steps ----------------------
  n = _STEPS_HI.value
  lam = np.asarray(sampling.logsnr_grid(np.arange(n), n, grid=s.grid, logsnr_min=s.logsnr_min,
                                        logsnr_max=s.logsnr_max, rho=s.rho))
  whole = {'unguided': _median_time(run(n, False)), 'f=1 (plain rule)': _median_time(run(n, True))}
  for f in (0.25, 0.5, 1.0):
    k = max(1, round(f * n))
    lo = (n - k) // 2                       # the middle k steps of the grid
    interval = (put(np.full(b, lam[lo] - 1e-3, np.float32)),
                put(np.full(b, lam[lo + k - 1] + 1e-3, np.float32)))
    guide = guidance.Guidance(w=put(np.ones(b, np.float32)), interval=interval)
    whole[f'interval f={k / n:.2f}'] = _median_time(run(n, True, guide=guide))
  interval_ratios = {f'{name} / unguided': round(t / whole['unguided'], 3)
                     for name, t in whole.items() if name != 'unguided'}

  # --- Each rule, through the public API (settings of docs/RESULTS.md's rule table) -------------
  rules = {'unguided': (None, {}), 'plain w=2': (2.0, {}),
           'interval sigma (0.2, 4] w=4': (4.0, {'interval_sigma': (0.2, 4.0)}),
           'interval sigma (0.5, 20] w=4': (4.0, {'interval_sigma': (0.5, 20.0)}),
           'rescale 0.7 w=4': (4.0, {'rescale': 0.7}),
           'threshold 0.995 w=2': (2.0, {'threshold': 0.995}),
           'apg r=5 w=3': (3.0, {'rule': 'apg', 'apg_norm': 5.0}),
           'cfgpp w=-0.4': (-0.4, {'rule': 'cfgpp'}),
           'linear schedule w=3': (3.0, {'schedule': 'linear'})}
  per_sample = {}
  for name, (w, settings) in rules.items():
    sample = functools.partial(pipe.sample, labels, w, steps=n, batch_size=b, **settings)
    per_sample[name] = _median_time(sample) / b
  rule_times = {name: {'ms_per_sample': round(1e3 * t, 2),
                       'vs_unguided': round(t / per_sample['unguided'], 3)}
                for name, t in per_sample.items()}

  # --- Collectives in the guided program on an 8-device mesh ----------------------------------
  mesh8 = sharding.make_mesh({'data': -1}, jax.devices()[:8])
  pipe8 = inference.Pipeline(config, params, mesh8, model=model)
  b8 = -(-b // 8) * 8
  put8 = lambda a: jax.device_put(a, sharding.batch_sharding(mesh8))
  hlo = pipe8.sample_batch.lower(
      pipe8.params, put8(np.arange(b8, dtype=np.int32) % pipe.num_classes),
      guidance.Guidance(w=put8(np.ones(b8, np.float32))), put8(np.arange(b8)), jax.random.key(0),
      4, 0.3, *grid_args, method=method, clip=True, grid=s.grid).compile().as_text()
  collectives = sum(hlo.count(f' {op}(') + hlo.count(f' {op}-start(') for op in COLLECTIVES)

  result = {
      **cli.host_info(),
      'config': config.data.name, 'method': method, 'batch': b, 'timing_devices': len(devices),
      'platform': devices[0].platform, 'compile_s': round(compile_s, 2),
      'guided_step_s': round(per_step[True], 4), 'unguided_step_s': round(per_step[False], 4),
      'forward_2b_s': round(forward_s, 4),
      'overhead_ratio_guided_step_vs_forward_2b': round(per_step[True] / forward_s, 3),
      'guided_vs_unguided_per_sample': round(per_step[True] / per_step[False], 3),
      'compilations_in_10_w_sweep': len(compiles),
      f'whole_run_{n}_steps_s': {k: round(v, 3) for k, v in whole.items()},
      'interval_time_per_sample_vs_unguided': interval_ratios,
      f'rules_{n}_steps_time_per_sample': rule_times,
      'collectives_per_guided_program_8_devices': collectives}
  cli.print_result(result, _JSON.value)


if __name__ == '__main__':
  cli.run(main, 'nothing was measured')
