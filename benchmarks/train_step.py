"""Train-step speed for a config: compile time, median step time, images/s, achieved GFLOP/s.

  python benchmarks/train_step.py --config=configs/fashion_mnist.py [--batch=64] [--json]
  python benchmarks/train_step.py --config=configs/fashion_mnist.py --torch   # needs .[bench]

FLOPs come from XLA's cost analysis of the compiled step: that counts one device's program (its
slice of the batch), so it is scaled by the device count to the whole global batch.
--torch also builds the same U-Net in PyTorch (benchmarks/torch_unet.py, equal parameter count)
and times both in this process, alternately, on the same batch: the train step and one sampler
forward on 2B rows, each reported as JAX ÷ PyTorch (below 1: JAX is faster). PyTorch runs on as
many threads as there are cores and JAX on one CPU device per core, unless --torch_threads and
--cpu_devices say otherwise. On a loaded machine PyTorch's OpenMP threads wait for each other:
compare on one core there (`taskset -c 0 ... --cpu_devices=1 --torch_threads=1`).
"""
import os
import statistics
import time

from absl import flags
from ml_collections import config_flags

from cfg_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).')
_BATCH = flags.DEFINE_integer('batch', None, 'Global batch (default: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of text.')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time the same U-Net in PyTorch; report JAX ÷ torch.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', None,
                                     'PyTorch intra-op threads (default: one per core).')
_CHANNELS_LAST = flags.DEFINE_bool('torch_channels_last', True,
                                   'PyTorch activations channels-last (else NCHW).')
flags.mark_flags_as_required(['config'])


def _alternate(fns, repeats):
  """Median seconds per call of each fn, calls interleaved so that load changes hit all alike."""
  for fn in fns:
    fn()  # warm-up
  times = [[] for _ in fns]
  for _ in range(repeats):
    for t, fn in zip(times, fns):
      t0 = time.perf_counter()
      fn()
      t.append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


def _versus_torch(config, model, compiled, state, batch, mesh, images, labels):
  """JAX and PyTorch step and 2B-row forward times, with their ratios."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch_unet  # pylint: disable=g-import-not-at-top  (benchmarks/, the script's folder)
  except ImportError:
    cli.fail('--torch needs PyTorch: pip install -e .[bench]')
  from cfg_jax import sharding  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
  trainer = torch_unet.Trainer(config, channels_last=_CHANNELS_LAST.value)
  jax_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  assert trainer.num_params() == jax_params, (trainer.num_params(), jax_params)

  def jax_step():
    nonlocal state
    state, m = compiled(state, batch)
    jax.block_until_ready(m)

  step_jax, step_torch = _alternate([jax_step, lambda: trainer.step(images, labels)], _STEPS.value)

  b = images.shape[0]
  rng = np.random.default_rng(1)
  z = rng.normal(size=(2 * b,) + images.shape[1:]).astype(np.float32)
  logsnr, labels2 = np.zeros(2 * b, np.float32), np.repeat(labels, 2)
  put = lambda a: jax.device_put(a, sharding.batch_sharding(mesh))
  forward = jax.jit(lambda p, z, l, y: model.apply({'params': p}, z, l, y))
  args = (state.params, put(z), put(logsnr), put(labels2))
  fwd_jax, fwd_torch = _alternate([lambda: jax.block_until_ready(forward(*args)),
                                   lambda: trainer.forward(z, logsnr, labels2)], _STEPS.value)
  return {
      'torch_version': torch.__version__, 'torch_threads': torch.get_num_threads(),
      'torch_channels_last': _CHANNELS_LAST.value, 'torch_params': trainer.num_params(),
      'jax_step_s': round(step_jax, 4), 'torch_step_s': round(step_torch, 4),
      'ratio_step_jax_over_torch': round(step_jax / step_torch, 3),
      'jax_forward_2b_s': round(fwd_jax, 4), 'torch_forward_2b_s': round(fwd_torch, 4),
      'ratio_forward_2b_jax_over_torch': round(fwd_jax / fwd_torch, 3)}


def main(argv):
  del argv
  runtime.setup(cpu_devices=cli.CPU_DEVICES.value)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cfg_jax import captions, sharding, tokenizer, train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  b, size, ch = config.train.batch_size, config.data.image_size, config.data.channels
  mesh = sharding.make_mesh(config.mesh)
  model, init, step, _ = train.build(config, mesh)
  state = init(jax.random.key(0))
  rng = np.random.default_rng(0)
  host_batch = {'image': rng.integers(0, 256, (b, size, size, ch), dtype=np.uint8),
                'label': rng.integers(0, config.data.num_classes, (b,), dtype=np.int32)}
  if 'text' in config.condition.kinds:   # the cost does not depend on the words
    host_batch['tokens'] = tokenizer.encode(captions.class_prompts(host_batch['label']),
                                            config.model.text_max_len)
  batch = sharding.global_batch(host_batch, mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan'))) * mesh.size

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
      **cli.host_info(),
      'config': config.data.name, 'model_dtype': config.model.dtype,
      'global_batch': b, 'devices': mesh.size,
      'platform': jax.devices()[0].platform,
      'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'compile_s': round(compile_s, 2), 'step_s_median': round(step_s, 4),
      'images_per_s': round(b / step_s, 1), 'gflop_per_step': round(flops / 1e9, 2),
      'achieved_gflop_per_s': round(flops / 1e9 / step_s, 1)}
  if _TORCH.value:
    result.update(_versus_torch(config, model, compiled, state, batch, mesh,
                                  host_batch['image'], host_batch['label']))
  cli.print_result(result, _JSON.value)


if __name__ == '__main__':
  cli.run(main, 'nothing was measured')
