"""Train-step speed for a config: compile time, median step time, images/s, achieved GFLOP/s.

  python benchmarks/train_step.py --config=configs/fashion_mnist.py [--batch=64] [--json]

FLOPs come from XLA's cost analysis of the compiled step (whole global batch, all devices).
"""
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from cfg_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).')
_BATCH = flags.DEFINE_integer('batch', None, 'Global batch (default: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of text.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  runtime.setup(cpu_devices=cli.CPU_DEVICES.value)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cfg_jax import sharding, train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  b, size, ch = config.train.batch_size, config.data.image_size, config.data.channels
  mesh = sharding.make_mesh(config.mesh)
  _, init, step, _ = train.build(config, mesh)
  state = init(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = sharding.global_batch({
      'image': rng.integers(0, 256, (b, size, size, ch), dtype=np.uint8),
      'label': rng.integers(0, config.data.num_classes, (b,), dtype=np.int32)}, mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan')))

  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  result = {
      'config': config.data.name, 'global_batch': b, 'devices': mesh.size,
      'platform': jax.devices()[0].platform,
      'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'compile_s': round(compile_s, 2), 'step_s_median': round(step_s, 4),
      'images_per_s': round(b / step_s, 1), 'gflop_per_step': round(flops / 1e9, 2),
      'achieved_gflop_per_s': round(flops / 1e9 / step_s, 1)}
  cli.print_result(result, _JSON.value)


if __name__ == '__main__':
  app.run(main)
