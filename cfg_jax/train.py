"""The training loop: `train(config, workdir)`, importable by tests and notebooks.

Reads top to bottom: workdir → mesh → data → model and optimizer → sharded, compiled step →
`loop`: restore or initialise → steps (log, checkpoint, sample, stop on SIGTERM or Ctrl-C) →
final checkpoint. `loop` takes any built step and data, so distillation runs it too
(cfg_jax.distill_train). The math lives in `cfg_jax.objective`; this module only owns side effects.
"""
import functools
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import tensorboardX
import tqdm
from etils import epath

from cfg_jax import captions, checkpoint, conditioning, config_lib, data, inference
from cfg_jax import model as model_lib, objective, runtime, sharding, visualize, workdir_lock

log = logging.getLogger('cfg_jax')


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or gradient and was told to stop."""


class WorkdirError(ValueError):
  """The workdir cannot be created or written."""


# Mistakes and failures that launchers report in one line, without a traceback.
USER_ERRORS = (config_lib.ConfigError, data.DataError, checkpoint.CheckpointError, WorkdirError,
               workdir_lock.WorkdirBusyError, NonFiniteError)


class Built(NamedTuple):
  """What `build` makes for one mesh: the network, jitted `init(rng) -> state` and
  `step(state, batch) -> (state, metrics)`, and the state's abstract shapes with shardings."""
  model: nn.Module
  init: Callable
  step: Callable
  abstract_state: Any


def build(config, mesh):
  """Model, optimizer and the sharded, jitted init and train-step functions for `mesh`."""
  model = model_lib.from_config(config)
  tx, schedule = objective.make_optimizer(config.train)
  init = functools.partial(objective.init_state, model, tx, config)
  abstract_state = sharding.abstract_output(
      init, jax.random.key(config.seed),
      shardings=lambda tree: sharding.state_shardings(mesh, tree, config.mesh.fsdp_min_bytes))
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  init = jax.jit(init, out_shardings=state_sharding)
  step = jax.jit(
      functools.partial(objective.train_step, model=model, tx=tx, schedule=schedule, config=config),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0)
  return Built(model, init, step, abstract_state)


def _log_metrics(writer, step, metrics, bar):
  if writer is not None:
    for k, v in metrics.items():
      writer.add_scalar(f'train/{k}', v, step)
  bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
  log.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))


def write_guidance_grid(pipe, params, workdir, step):
  """Samples config.sample.per_class images per class at each w of config.sample.guidance
  (text models: for each class's plainest prompt, "a t-shirt", …)."""
  s, k = pipe.config.sample, pipe.num_classes
  ws = list(s.guidance)
  w, labels = visualize.grid_inputs(ws, range(k), s.per_class)
  kinds = pipe.config.condition.kinds
  prompts = captions.class_prompts(labels) if 'text' in kinds else None
  pipe.set_params(params)
  x = pipe.sample(labels if 'label' in kinds else None, w, prompts=prompts, seed=0)
  if jax.process_index() == 0:
    path = epath.Path(workdir) / 'samples' / f'grid_{step:07d}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('wb') as f:
      visualize.guidance_grid(x.reshape((len(ws), k, s.per_class) + x.shape[1:]), ws,
                              captions.class_prompts(range(k)) if prompts else
                              visualize.class_names(pipe.config), f,
                              f'step {step}, EMA, {s.method} {s.steps} steps')
    log.info('wrote %s', path)


def check_workdir(workdir):
  """Creates `workdir` and proves it writable now, not after minutes of compiling."""
  path = epath.Path(workdir)
  probe = path / f'.write_test.{jax.process_index()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f'workdir {workdir} cannot be written ({e.strerror or e}); choose '
                       f'another --workdir or fix its permissions') from None


def train(config, workdir, stop=None):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  SIGTERM or Ctrl-C saves a checkpoint after the current step and returns early (state.step
  tells). stop: the runtime.StopSignal to obey (a launcher's, installed before compiling, names
  the signal); default: one installed before the loop starts. One run per workdir at a time.
  """
  config = config_lib.validate(config)
  check_workdir(workdir)
  with workdir_lock.held(workdir):
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_divisible(config.train.batch_size, mesh)
    # Data before compiling, so that a missing data set fails fast.
    source = data.load_source(config.data, config.data.train_split)
    annotate = conditioning.annotator(config, source)   # captions for text conditioning
    built = build(config, mesh)
    stop = stop or runtime.StopSignal()
    try:
      return loop(config, workdir, mesh, built,
                  functools.partial(data_batches, source, config, annotate=annotate), stop)
    finally:
      stop.close()


def data_batches(source, config, start, annotate=None):
  """The training batches of `config` from step `start` (a pure function of seed and step);
  annotate: `conditioning.annotator(config, source)`, which adds each example's caption."""
  return data.batches(source, seed=config.seed, global_batch_size=config.train.batch_size,
                      start_step=start, num_threads=config.data.num_threads, annotate=annotate)


def loop(config, workdir, mesh, built, batches, stop):
  """Restores `built`'s state from `workdir` (else `built.init(key(config.seed))`) and runs
  `built.step` to config.train.num_steps: logs, checkpoints, guidance grids, and a save and
  early return when `stop` is reached. batches(start_step): the host batches from that step.

  Shared by training and distillation; the caller holds the workdir lock and owns `stop`.
  """
  t = config.train
  is_main = jax.process_index() == 0

  # --- Restore or initialise --------------------------------------------------------------
  mngr = checkpoint.manager(workdir, keep=t.keep_checkpoints)
  if mngr.latest_step() is not None:
    state = checkpoint.restore(mngr, built.abstract_state, config=config)
    log.info('resumed from step %d in %s', int(state.step), workdir)
  else:
    state = built.init(jax.random.key(config.seed))
  start = int(jax.device_get(state.step))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info('%s params on mesh %s; steps %d -> %d', f'{n_params:,}', dict(mesh.shape), start, t.num_steps)
  batches = batches(start)

  # --- Loop -------------------------------------------------------------------------------
  writer = None  # opened at the first log, so that a run failing before it writes nothing
  bar = tqdm.tqdm(total=t.num_steps, initial=start, disable=not is_main, desc='train',
                  unit='step', dynamic_ncols=True)
  window_start, window_steps = time.perf_counter(), 0
  pipe = None
  window = None   # metrics summed on the device since the last log; read only at log steps
  try:
    for step in range(start, t.num_steps):
      batch = next(batches)
      data.check_labels(batch['label'], config.data.num_classes)
      state, metrics = built.step(state, sharding.global_batch(batch, mesh))
      window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
      window_steps += 1
      bar.update(1)
      done = step + 1
      saving = done % t.checkpoint_every == 0 or done == t.num_steps
      stopping = stop.reached(done)

      if done % t.log_every == 0 or saving or stopping:
        # The host's only sync: the non-finite check covers every step since the last read,
        # so no checkpoint is written after a non-finite step went unnoticed.
        window = {k: float(v) for k, v in jax.device_get(window).items()}
        nonfinite = int(window.pop('nonfinite'))
        if nonfinite and t.on_nonfinite == 'stop':
          raise NonFiniteError(
              f'non-finite loss or gradient up to step {done} ({nonfinite} of the last '
              f'{window_steps} steps); stopped without saving, the last good checkpoint is kept. '
              f'Lower the learning rate or set --config.train.on_nonfinite=skip')
        if nonfinite:
          log.warning('non-finite loss or gradient in %d of the %d steps up to step %d: updates '
                      'skipped', nonfinite, window_steps, done)
        elapsed = time.perf_counter() - window_start
        metrics = {k: v / window_steps for k, v in window.items()}   # means over the window
        metrics['steps_per_sec'] = window_steps / elapsed
        metrics['images_per_sec'] = window_steps * t.batch_size / elapsed
        if writer is None and is_main:
          writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
        _log_metrics(writer, done, metrics, bar)
        window_start, window_steps, window = time.perf_counter(), 0, None

      if saving or stopping:
        checkpoint.save(mngr, state, config)
      if stopping:
        log.warning('%s: saved a checkpoint at step %d in %s and stopped', stop.received, done,
                    workdir)
        break
      grid_due = ((t.sample_every and done % t.sample_every == 0)
                  or (t.grid_at_end and done == t.num_steps))
      if config.sample.per_class and 'embedding' not in config.condition.kinds and grid_due:
        pipe = pipe or inference.Pipeline(config, state.ema_params, mesh, model=built.model)
        write_guidance_grid(pipe, state.ema_params, workdir, done)
  finally:
    bar.close()
    mngr.wait_until_finished()
    if writer is not None:
      writer.close()
  return state
