"""Plan before you pay: compile the real train step and sampler for N devices, allocating nothing.

  python launch/aot_report.py --config=configs/imagenet64.py --devices=64 --peak_tflops=275 \
      [--config.mesh.fsdp=8 --sample_batch=2048]

Simulates N CPU devices, builds the config's mesh, lowers the sharded train step and the guided
sampler `Pipeline.sample_batch` (on the EMA laid out as training holds it, as the training
sample grids use it) from abstract shapes (jax.ShapeDtypeStruct with shardings), compiles them
with XLA and prints: parameters; FLOPs per device per step (XLA cost analysis); per-device
memory (XLA memory analysis: arguments, outputs, temporaries, donated); the collectives of each
compiled program by kind (count and bytes per device); and the time per step that the FLOPs
imply at a chip's peak FLOP/s (TPU v4 275, v5e 197, v5p 459, v6e 918, H100 989 bf16 TFLOP/s).

The figures come from XLA's CPU compiler. FLOPs are exact for the program; memory is the CPU
compiler's schedule, which keeps bfloat16 convolutions in float32 and fuses differently, so
treat temporaries as an upper bound for TPU/GPU. Peak-FLOP times are lower bounds.
"""
import collections
import math
import re
import time

from absl import flags
from ml_collections import config_flags

from cfg_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).')
_DEVICES = flags.DEFINE_integer('devices', 8, 'Devices to simulate (the whole pod or slice).')
_PEAK = flags.DEFINE_float('peak_tflops', 275.0, 'Peak dense bf16 TFLOP/s of one chip.')
_SAMPLE_BATCH = flags.DEFINE_integer(
    'sample_batch', None, 'Samples per sampler call (default: the training batch size).')
_SKIP_SAMPLER = flags.DEFINE_bool('skip_sampler', False, 'Compile the train step only.')
flags.mark_flags_as_required(['config'])

GB = 1024 ** 3


def _gib(n):
  return f'{n / GB:.2f} GiB' if n >= GB / 100 else f'{n / 1024 ** 2:.1f} MiB'


def _ms(seconds):
  return f'{seconds * 1e3:.1f} ms' if seconds >= 1e-3 else f'{seconds * 1e6:.0f} us'


def _compile(fn, *args, **static):
  start = time.perf_counter()
  lowered = fn.lower(*args, **static)
  compiled = lowered.compile()
  return compiled, time.perf_counter() - start


_COLLECTIVE = re.compile(r'= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|'
                         r'collective-permute)(?:-start)?\(')
_ARRAY = re.compile(r'(pred|[subf]|bf)(\d*)\[([\d,]*)\]')


def _collectives(hlo_text):
  """{op: (count, bytes of its results)} per device, read from the compiled HLO."""
  out = collections.defaultdict(lambda: [0, 0])
  for match in _COLLECTIVE.finditer(hlo_text):
    size = 0
    for kind, bits, dims in _ARRAY.findall(match.group(1)):
      n = 1
      for d in filter(None, dims.split(',')):
        n *= int(d)
      size += n * (int(bits or 8) if kind != 'pred' else 8) // 8
    out[match.group(2)][0] += 1
    out[match.group(2)][1] += size
  return dict(out)


def _report(name, compiled, seconds, peak_tflops, what, calls=1):
  """One block of figures for a compiled program that runs `what` `calls` times; returns the
  FLOPs per device of one."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) / calls
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  ideal = flops / (peak_tflops * 1e12)
  print(f'{name} (compiled in {seconds:.0f} s)\n'
        f'  FLOPs per device per {what}: {flops / 1e12:.4g} TFLOP\n'
        f'  memory per device: arguments {_gib(m.argument_size_in_bytes)}, outputs '
        f'{_gib(m.output_size_in_bytes)}, temporaries {_gib(m.temp_size_in_bytes)}, donated '
        f'{_gib(m.alias_size_in_bytes)}; total {_gib(total)}\n'
        f'  time per {what} at {peak_tflops:g} TFLOP/s: {_ms(ideal)} at peak, '
        f'{_ms(2 * ideal)} at 50% of peak (compute only)')
  print(f'  collectives per device (not in that time): {_collectives_line(compiled)}')
  return flops


def _collectives_line(compiled):
  comms = _collectives(compiled.as_text())
  return ', '.join(f'{n} {op} ({_gib(size)})' for op, (n, size) in sorted(comms.items())) or 'none'


def main(argv):
  del argv
  cli.require(_DEVICES.value >= 1, f'--devices must be >= 1, got {_DEVICES.value}')
  cli.require(_PEAK.value > 0 and math.isfinite(_PEAK.value),
              f'--peak_tflops must be a finite number > 0, got {_PEAK.value}')
  cli.require(_SAMPLE_BATCH.value is None or _SAMPLE_BATCH.value >= 1,
              f'--sample_batch must be >= 1, got {_SAMPLE_BATCH.value}')
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')   # simulated devices, even on an accelerator host
  cli.setup_runtime(cpu_devices=_DEVICES.value, single_process=True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cfg_jax import config_lib, guidance, inference, sharding, train  # pylint: disable=g-import-not-at-top
  cli.quiet_logging()

  config = _CONFIG.value
  try:
    config = config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_divisible(config.train.batch_size, mesh)
  except config_lib.ConfigError as e:
    cli.fail(str(e))
  b, size, ch = config.train.batch_size, config.data.image_size, config.data.channels
  print(f'{config.data.name}: {size}x{size}x{ch}, {config.data.num_classes} classes, '
        f'{config.model.dtype} compute; mesh {dict(mesh.shape)} of {mesh.size} simulated '
        f'devices; global batch {b} ({b // mesh.size} per device)')

  # --- Train step: the jitted, sharded function that training runs -----------------------
  model, _, train_step, abstract_state = train.build(config, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
  print(f'parameters: {n_params:,} ({_gib(n_params * 4)} float32; params + EMA + Adam '
        f'= {_gib(4 * n_params * 4)} per replica)')
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {'image': jax.ShapeDtypeStruct((b, size, size, ch), jnp.uint8, sharding=batch_sharding),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding)}
  compiled, seconds = _compile(train_step, abstract_state, batch)
  flops = _report('train step', compiled, seconds, _PEAK.value, 'step')
  print(f'  {flops * mesh.size / b / 1e9:.3g} GFLOP per training image; '
        f'{config.train.num_steps:,} steps take >= '
        f'{flops / (_PEAK.value * 1e12) * config.train.num_steps / 3600:.3g} h at peak')
  if _SKIP_SAMPLER.value:
    return

  # --- Guided sampler: Pipeline.sample_batch, one program for every w, step count and seed ---
  s = config.sample
  n = _SAMPLE_BATCH.value or b
  n = max(mesh.size, n // mesh.size * mesh.size)
  pipe = inference.Pipeline(config, None, mesh, model=model)   # parameters are an argument
  per_sample = lambda dtype: jax.ShapeDtypeStruct((n,), dtype, sharding=batch_sharding)
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=sharding.replicated(mesh))
  compiled, seconds = _compile(
      pipe.sample_batch, abstract_state.ema_params,   # the EMA as training holds it
      per_sample(jnp.int32), guidance.Guidance(w=per_sample(jnp.float32)), per_sample(jnp.int32),
      scalar(jax.random.key(0).dtype), scalar(jnp.int32), scalar(jnp.float32),
      (scalar(jnp.float32), scalar(jnp.float32)), scalar(jnp.float32),
      method=s.method, clip=s.clip, grid=s.grid)
  # XLA counts a loop body once: the program is one sampling step (the loop body) and the final
  # denoising call, each one guided network call on 2n rows.
  flops = _report(f'guided sampler, {s.method}, {n} samples per call ({2 * n} network rows per '
                  'step)', compiled, seconds, _PEAK.value, 'sampling step', calls=2)
  print(f'  {s.steps} steps for {n} samples take >= '
        f'{flops / (_PEAK.value * 1e12) * s.steps:.3g} s at peak')


if __name__ == '__main__':
  cli.run(main, 'nothing was compiled to the end')
