"""Distilling a trained workdir: `run(config, teacher, workdir)`, importable by tests.

Reads top to bottom: the run's settings (`base_config`, `validate`) → the teacher's config and
EMA parameters, sharded like the student's → the student's config (the teacher's, with a
w-embedding, the run's training settings, DDIM sampling and where it came from) → the compiled
step → `train.loop` (restore or initialise, checkpoints, logs, stop on SIGTERM or Ctrl-C).
Stage 'guidance' writes one student in `workdir`; stage 'progressive' writes one student per
halving in workdir/round_1, round_2, ..., each the next one's teacher, each loadable with
`cfg_jax.load`. A rerun resumes where the last one stopped. The math is in `cfg_jax.distill`.
"""
import functools
import logging
import math
import os
from typing import Any, NamedTuple

import jax
import ml_collections

from cfg_jax import checkpoint, conditioning, config_lib, data, distill, model as model_lib
from cfg_jax import objective, runtime, sharding, train, workdir_lock

log = logging.getLogger('cfg_jax')


def base_config():
  """The schema and defaults of a distillation run (configs/distill.py starts from it)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stage = 'guidance'   # 'guidance' (stage 1) or 'progressive' (stage 2)
  config.w_min = 0.0          # w ~ U[w_min, w_max] per example (the paper's w)
  config.w_max = 4.0
  config.steps = 17           # stage 1: the student's DDIM steps (network calls per sample)
  config.rounds = 2           # stage 2: halvings of the teacher's DDIM updates (17 -> 9 -> 5)
  # The student's training, one run for stage 1, per round for stage 2; the loss weighting and
  # the λ distribution are the teacher's.
  config.train = dict(num_steps=1000, batch_size=64, learning_rate=1e-4, warmup_steps=100,
                      lr_schedule='constant', grad_clip=1.0, ema_decay=0.998, ema_power=0.0,
                      on_nonfinite='stop', log_every=50, checkpoint_every=250,
                      keep_checkpoints=2, sample_every=0)
  config.sample = dict(per_class=4, guidance=(0.0, 1.0, 2.0, 4.0))   # grids (0: none)
  config.mesh = dict(data=-1, fsdp=1, fsdp_min_bytes=4 * 1024 ** 2)
  return config


def validate(config):
  """Raises config_lib.ConfigError for a run that cannot make sense (its train, sample and mesh
  settings are checked as part of the student's config, `student_config`)."""
  config_lib.check_schema(config, base_config())
  if config.stage not in distill.STAGES:
    raise config_lib.ConfigError(f'config.stage={config.stage!r}: use one of '
                                 f'{", ".join(distill.STAGES)}')
  if not (math.isfinite(config.w_min) and math.isfinite(config.w_max)
          and config.w_min <= config.w_max):
    raise config_lib.ConfigError(f'the w range [config.w_min, config.w_max] = [{config.w_min}, '
                                 f'{config.w_max}] must be finite and not empty (w_min <= w_max)')
  if config.steps < 2 or config.rounds < 1:
    raise config_lib.ConfigError(f'config.steps={config.steps} must be >= 2 and '
                                 f'config.rounds={config.rounds} >= 1')
  return config


def student_config(config, teacher_config, teacher_dir, round_):
  """The full config of the student of `teacher_config`: the teacher's, with the run's seed,
  training, image-grid and mesh settings, w as an input, and DDIM sampling in config.steps steps
  (stage 1) or half its teacher's updates (stage 2)."""
  student = ml_collections.ConfigDict(teacher_config.to_dict())
  student.seed = config.seed
  for group in ('train', 'sample', 'mesh'):
    student[group].update(config[group].to_dict())
  student.model.guidance_embed = True
  steps = config.steps if config.stage == 'guidance' else (teacher_config.sample.steps + 1) // 2
  student.sample.update(method='ddim', steps=steps)
  student.distill.update(stage=config.stage, teacher=os.path.abspath(teacher_dir),
                         w_min=float(config.w_min), w_max=float(config.w_max), round=round_)
  return config_lib.validate(student)


def teacher_config(config, teacher_dir, rounds_left):
  """The teacher's saved config, checked to fit the stage; raises CheckpointError or
  ConfigError in one line."""
  mngr = checkpoint.manager(teacher_dir, read_only=True)
  if mngr.latest_step() is None:
    raise checkpoint.CheckpointError(f'no teacher checkpoint in {checkpoint.checkpoint_dir(teacher_dir)}; '
                                     f'give --teacher a workdir trained with launch/train.py')
  teacher = checkpoint.restore_config(mngr)
  if not conditioning.is_labels_only(teacher):
    raise config_lib.ConfigError(f'the teacher {teacher_dir} is conditioned on '
                                 f'{" + ".join(teacher.condition.kinds)}; distillation takes '
                                 f'class-conditioned teachers only')
  if config.stage == 'guidance':
    if teacher.model.guidance_embed:
      raise config_lib.ConfigError(f'the teacher {teacher_dir} is already a distilled student; '
                                   f'distill it further with --config.stage=progressive')
    if teacher.train.p_uncond <= 0:
      raise config_lib.ConfigError(f'the teacher {teacher_dir} was trained without condition '
                                   f'dropout (p_uncond=0): it has no ∅ prediction to guide with')
    return teacher
  if not teacher.model.guidance_embed:
    raise config_lib.ConfigError(f'the teacher {teacher_dir} is not a guidance-distilled student; '
                                 f'distill it first with --config.stage=guidance')
  updates = teacher.sample.steps - 1
  if updates % 2 ** rounds_left:
    raise config_lib.ConfigError(
        f'the teacher {teacher_dir} samples with {teacher.sample.steps} steps ({updates} DDIM '
        f'updates), which {rounds_left} halving(s) cannot split evenly; distill stage 1 with '
        f'--config.steps=2^k+1 (e.g. 17) or lower --config.rounds')
  return teacher


def check_same_teacher(workdir, teacher, teacher_dir):
  """A student resumed in `workdir` must have been started from a teacher of the same data,
  model and diffusion; raises CheckpointError naming the settings that differ."""
  mngr = checkpoint.manager(workdir, read_only=True)
  if mngr.latest_step() is None:
    return
  saved = checkpoint.restore_config(mngr)
  diffs = checkpoint.setting_diffs(saved.to_dict(), teacher,
                                   sections=('data', 'diffusion', 'model'), ignore=('guidance_embed',))
  if diffs:
    raise checkpoint.CheckpointError(
        f'the teacher {teacher_dir} does not match the student in {workdir} '
        f'({", ".join(diffs)}); distill from {saved.distill.teacher} or into a new --workdir')


def load_teacher_params(teacher_dir, teacher, mesh, min_bytes):
  """The teacher's EMA parameters, sharded as the student's parameters are (data-parallel
  replicas, or FSDP for the arrays of at least `min_bytes`)."""
  shapes = jax.eval_shape(functools.partial(model_lib.init_params, model_lib.from_config(teacher),
                                            teacher), jax.random.key(0))
  mngr = checkpoint.manager(teacher_dir, read_only=True)
  return checkpoint.restore_ema_params(
      mngr, sharding.abstract(shapes, sharding.state_shardings(mesh, shapes, min_bytes)))


def build(config, teacher, teacher_params, mesh):
  """The student's `train.Built` for `mesh`: init and step take the frozen teacher's parameters
  as an argument (not as constants of the program) and are jitted with the training shardings."""
  model, teacher_model = model_lib.from_config(config), model_lib.from_config(teacher)
  tx, schedule = objective.make_optimizer(config.train)
  init = functools.partial(distill.init_state, model, tx, config)
  abstract = jax.eval_shape(init, teacher_params, jax.random.key(config.seed))
  state_sharding = sharding.state_shardings(mesh, abstract, config.mesh.fsdp_min_bytes)
  teacher_sharding = jax.tree.map(lambda x: x.sharding, teacher_params)
  init = jax.jit(init, out_shardings=state_sharding)
  step = jax.jit(
      functools.partial(distill.step, model=model, teacher=teacher_model, tx=tx,
                        schedule=schedule, config=config),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh), teacher_sharding),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  return train.Built(model, lambda rng: init(teacher_params, rng),
                     lambda state, batch: step(state, batch, teacher_params),
                     sharding.abstract(abstract, state_sharding))


class Result(NamedTuple):
  """The last student trained: its state, workdir and the step its run trains to."""
  state: Any
  workdir: str
  num_steps: int

  @property
  def finished(self):
    return int(self.state.step) >= self.num_steps


def run(config, teacher_dir, workdir, stop=None):
  """Distils `teacher_dir` into `workdir` (stage 1) or workdir/round_k (stage 2), resuming what
  is there; returns the `Result` of the last student trained (unfinished if stopped).

  stop: as for `train.train`. One run per workdir at a time.
  """
  config = validate(config)
  if os.path.abspath(teacher_dir) == os.path.abspath(workdir):
    raise config_lib.ConfigError(f'--workdir={workdir} is the teacher\'s workdir; give the '
                                 f'student a new --workdir')
  train.check_workdir(workdir)
  with workdir_lock.held(workdir):
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_divisible(config.train.batch_size, mesh)
    stop = stop or runtime.StopSignal()
    try:
      if config.stage == 'guidance':
        return _student(config, teacher_dir, workdir, mesh, stop, 0)
      for round_ in range(1, config.rounds + 1):
        result = _student(config, teacher_dir, round_dir(workdir, round_), mesh, stop, round_)
        if not result.finished:
          break
        teacher_dir = result.workdir
      return result
    finally:
      stop.close()


def round_dir(workdir, round_):
  return os.path.join(workdir, f'round_{round_}')


def _student(config, teacher_dir, workdir, mesh, stop, round_):
  rounds_left = config.rounds - round_ + 1
  teacher = teacher_config(config, teacher_dir, rounds_left)
  check_same_teacher(workdir, teacher, teacher_dir)
  student = student_config(config, teacher, teacher_dir, round_)
  source = data.load_source(student.data, student.data.train_split)
  teacher_params = load_teacher_params(teacher_dir, teacher, mesh, config.mesh.fsdp_min_bytes)
  log.info('distilling %s (%s %d steps) into %s: %s, %s %d steps, w ~ U[%g, %g]', teacher_dir,
           teacher.sample.method, teacher.sample.steps, workdir, config.stage,
           student.sample.method, student.sample.steps, config.w_min, config.w_max)
  built = build(student, teacher, teacher_params, mesh)
  state = train.loop(student, workdir, mesh, built,
                     functools.partial(train.data_batches, source, student), stop)
  return Result(state, workdir, student.train.num_steps)
