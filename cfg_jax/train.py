"""The training loop: `train_and_evaluate(config, workdir)`, importable by tests and notebooks.

Reads top to bottom: mesh → data → model and optimizer → sharded, compiled step → restore or
initialise → loop (log, checkpoint, sample) → final checkpoint. The math lives in
`cfg_jax.training`; this module only owns side effects.
"""
import functools
import logging
import os
import time

import jax
import numpy as np
import tensorboardX
import tqdm

from cfg_jax import checkpoint, config_lib, data, inference, model as model_lib, sharding, training
from cfg_jax import visualize

log = logging.getLogger('cfg_jax')


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or gradient and was told to stop."""


def build(config, mesh):
  """Model, optimizer and the sharded, jitted init and train-step functions for `mesh`."""
  model = model_lib.from_config(config)
  tx, schedule = training.make_optimizer(config.train)
  init = functools.partial(training.init_state, model, tx, config)
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  state_sharding = sharding.state_shardings(mesh, abstract)
  init = jax.jit(init, out_shardings=state_sharding)
  step = jax.jit(
      functools.partial(training.train_step, model=model, tx=tx, schedule=schedule, config=config),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
  return model, init, step, abstract


def _log_metrics(writer, step, metrics, bar):
  if writer is not None:
    for k, v in metrics.items():
      writer.add_scalar(f'train/{k}', v, step)
  bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
  log.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))


def write_guidance_grid(pipe, params, workdir, step):
  """Samples config.sample.per_class images per class at each w of config.sample.guidance."""
  s, k = pipe.config.sample, pipe.num_classes
  ws = np.asarray(s.guidance, np.float32)
  labels = np.tile(np.repeat(np.arange(k), s.per_class), len(ws))
  pipe.set_params(params)
  x = pipe.sample(labels, np.repeat(ws, k * s.per_class), seed=0)
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'samples', f'grid_{step:07d}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    visualize.guidance_grid(x.reshape((len(ws), k, s.per_class) + x.shape[1:]), ws,
                            visualize.class_names(pipe.config), path,
                            f'step {step}, EMA, {s.method} {s.steps} steps')
    log.info('wrote %s', path)


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state."""
  config = config_lib.validate(config)
  t = config.train
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # --- Mesh -------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_divisible(t.batch_size, mesh)

  # --- Model, optimizer, compiled step ----------------------------------------------------
  model, init, train_step, abstract_state = build(config, mesh)

  # --- Restore or initialise --------------------------------------------------------------
  mngr = checkpoint.manager(workdir, keep=t.keep_checkpoints)
  if mngr.latest_step() is not None:
    state = checkpoint.restore(mngr, abstract_state)
    log.info('resumed from step %d in %s', int(state.step), workdir)
  else:
    state = init(jax.random.key(config.seed))
  start = int(jax.device_get(state.step))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info('%s params on mesh %s; steps %d -> %d', f'{n_params:,}', dict(mesh.shape), start, t.num_steps)

  # --- Data -------------------------------------------------------------------------------
  source = data.load_source(config.data, config.data.train_split)
  batches = data.batches(source, seed=config.seed, global_batch_size=t.batch_size,
                         start_step=start, num_threads=config.data.num_threads)

  # --- Loop -------------------------------------------------------------------------------
  writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard')) if is_main else None
  bar = tqdm.tqdm(total=t.num_steps, initial=start, disable=not is_main, desc='train',
                  unit='step', dynamic_ncols=True)
  window_start, window_steps = time.perf_counter(), 0
  pipe = None
  try:
    for step in range(start, t.num_steps):
      batch = next(batches)
      if step == start:
        data.check_labels(batch['label'], config.data.num_classes)
      state, metrics = train_step(state, sharding.global_batch(batch, mesh))
      window_steps += 1
      bar.update(1)
      done = step + 1

      if done % t.log_every == 0 or done == t.num_steps or not metrics['finite']:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not metrics.pop('finite'):
          if t.on_nonfinite == 'stop':
            raise NonFiniteError(
                f'non-finite loss or gradient at step {done} (loss={metrics["loss"]}); stopped '
                f'without saving, the last good checkpoint is kept. Lower the learning rate or '
                f"set --config.train.on_nonfinite=skip")
          log.warning('non-finite loss or gradient at step %d: update skipped', done)
        elapsed = time.perf_counter() - window_start
        metrics['steps_per_sec'] = window_steps / elapsed
        metrics['images_per_sec'] = window_steps * t.batch_size / elapsed
        _log_metrics(writer, done, metrics, bar)
        window_start, window_steps = time.perf_counter(), 0

      if done % t.checkpoint_every == 0 or done == t.num_steps:
        checkpoint.save(mngr, state, config)
      if config.sample.per_class and (
          (t.sample_every and done % t.sample_every == 0) or done == t.num_steps):
        pipe = pipe or inference.Pipeline(config, state.ema_params, mesh, model=model)
        write_guidance_grid(pipe, state.ema_params, workdir, done)
  finally:
    bar.close()
    mngr.wait_until_finished()
    if writer is not None:
      writer.close()
  return state
