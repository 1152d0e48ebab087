"""Guidance distillation: stage 1's target is the teacher's guided prediction (float64), the student
starts as its teacher at every w, a distilled pipeline runs B rows per step, stage 2's target lands
where two teacher DDIM steps land (float64), SIGTERM saves and resume is bit-identical, and bad
inputs cost one line and exit 2."""
import concurrent.futures
import functools
import importlib.util
import os
import re
import signal
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfg_jax
import launcher
from cfg_jax import checkpoint, distill, distill_train, inference, model as model_lib
from cfg_jax import objective, sharding
from conftest import ROOT, tiny_config

FINAL = 8   # steps of the stage-1 runs that are interrupted and compared


def run_config(**overrides):
  """configs/distill.py:tiny with top-level `overrides` and train.* as `train_<key>`."""
  spec = importlib.util.spec_from_file_location('distill_config',
                                                os.path.join(ROOT, 'configs', 'distill.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  for key, value in overrides.items():
    if key.startswith('train_'):
      config.train[key[len('train_'):]] = value
    else:
      config[key] = value
  return config


def _perturbed(params, seed=1, scale=0.05):
  """Random weights everywhere (a fresh U-Net's zero-initialised layers would make ε ≡ 0)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def _init_state(model, config, teacher_params=None, seed=0):
  """The training state of a fresh `model` (a student of `teacher_params`, if given)."""
  tx = objective.make_optimizer(config.train)[0]
  if teacher_params is None:
    return jax.jit(functools.partial(objective.init_state, model, tx, config))(jax.random.key(seed))
  return jax.jit(functools.partial(distill.init_state, model, tx, config))(teacher_params,
                                                                         jax.random.key(seed))


def _teacher(prediction='eps', config=None):
  """A tiny teacher with random weights: (config, model, parameters)."""
  config = config or tiny_config()
  config.diffusion.prediction = prediction
  model = model_lib.from_config(config)
  return config, model, _perturbed(_init_state(model, config).params)


def _save_teacher(workdir, config=None):
  """A teacher workdir without training: one checkpoint of random weights."""
  config, _, params = _teacher(config=config)
  state = objective.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                               opt_state=())
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, state, config)
  mngr.wait_until_finished()
  return workdir


def _alpha_sigma64(logsnr):
  logsnr = np.asarray(logsnr, np.float64)
  return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def _b(a):
  return a[:, None, None, None]


@pytest.fixture(scope='module')
def batch():
  from cfg_jax import data
  source = data.load_fashion_mnist('train')
  return {'image': jnp.asarray(source.images[:16]), 'label': jnp.asarray(source.labels[:16])}


@pytest.mark.parametrize('prediction', ['eps', 'v'])
def test_stage1_target_is_the_guided_x_of_the_frozen_teacher(prediction, batch):
  teacher_config, teacher, params = _teacher(prediction)
  config = distill_train.student_config(run_config(w_min=0.5, w_max=3.0), teacher_config, 't', 0)
  example = jax.jit(functools.partial(distill.guidance_example, teacher=teacher, config=config))
  z, logsnr, labels, w, target = example(jax.random.key(3), batch, params)
  w64 = np.asarray(w, np.float64)
  assert np.all((w64 >= 0.5) & (w64 <= 3.0)) and np.ptp(w64) > 0.5

  # Independently: two separate teacher calls, x̂ of each, (1 + w)·x̂_c − w·x̂_u, in float64.
  apply = jax.jit(teacher.apply)
  out = lambda c: np.asarray(apply({'params': params}, z, logsnr, c), np.float64)
  a, s = (_b(v) for v in _alpha_sigma64(logsnr))
  z64 = np.asarray(z, np.float64)
  to_x = (lambda f: (z64 - s * f) / a) if prediction == 'eps' else (lambda f: a * z64 - s * f)
  x_c, x_u = to_x(out(labels)), to_x(out(jnp.full_like(labels, 10)))
  x = (1 + _b(w64)) * x_c - _b(w64) * x_u
  want = (z64 - a * x) / s if prediction == 'eps' else (a * z64 - x) / s
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(target, np.float64), want, rtol=1e-4, atol=1e-4)


def test_student_starts_as_its_teacher_at_every_w(batch):
  teacher_config, teacher, params = _teacher()
  config = distill_train.student_config(run_config(), teacher_config, 't', 0)
  student = model_lib.from_config(config)
  state = _init_state(student, config, params, seed=5)
  names = lambda p: {'/'.join(k) for k in flax.traverse_util.flatten_dict(p)}
  assert names(state.params) - names(params) == {'w_embed_in/kernel', 'w_embed_in/bias',
                                                 'w_embed_out/kernel', 'w_embed_out/bias'}
  z = jax.random.normal(jax.random.key(1), (16, 28, 28, 1))
  logsnr = jnp.linspace(-8.0, 8.0, 16)
  want = jax.jit(teacher.apply)({'params': params}, z, logsnr, batch['label'])
  assert float(jnp.abs(want).max()) > 0.1
  apply = jax.jit(student.apply)
  for w in (0.0, 1.5, 4.0):
    got = apply({'params': state.params}, z, logsnr, batch['label'], jnp.full((16,), w))
    np.testing.assert_array_equal(got, want)


class _Counting:
  """A model that reports the rows of every network call as it runs."""

  def __init__(self, model):
    self.model, self.rows = model, []

  def apply(self, variables, z, logsnr, labels, **kw):
    jax.debug.callback(lambda l: self.rows.append(len(l)), labels)
    return self.model.apply(variables, z, logsnr, labels, **kw)


def test_distilled_pipeline_runs_one_b_row_call_per_step_at_any_w():
  teacher_config, teacher, params = _teacher()
  config = distill_train.student_config(run_config(steps=5), teacher_config, 't', 0)
  student = model_lib.from_config(config)
  state = _init_state(student, config, params, seed=5)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  pipe = inference.Pipeline(config, state.ema_params, mesh, model=_Counting(student))
  assert pipe.distilled and 'distilled student (guidance distillation' in repr(pipe)
  assert 'ddim 5 steps' in pipe.describe()
  labels, ws = np.arange(6) % 10, np.array([0, 0.5, 1, 2, 3, 4], np.float32)
  x = pipe.sample(labels, ws, seed=4)
  assert pipe.model.rows == [6] * 5   # 5 steps, 6 rows each, w per example

  # At initialisation the student is its teacher at every w: the conditional model's DDIM samples.
  teacher_pipe = inference.Pipeline(teacher_config, params, mesh, model=_Counting(teacher))
  np.testing.assert_allclose(x, teacher_pipe.sample(labels, None, method='ddim', steps=5, seed=4),
                             atol=1e-5)
  teacher_pipe.model.rows.clear()
  teacher_pipe.sample(labels, 2.0, method='ddim', steps=5, seed=4)
  assert teacher_pipe.model.rows == [12] * 5   # guidance: conditional and ∅ rows
  with pytest.raises(ValueError, match='rescale do not apply'):
    pipe.sample(labels, 2.0, rescale=0.7)


def _edm_grid64(t, n, lo=-8.764, hi=12.43, rho=7.0):
  """EDM's ρ-grid over σ ∈ [0.002, 80], written out in float64."""
  big, small = np.exp(-lo / 2) ** (1 / rho), np.exp(-hi / 2) ** (1 / rho)
  return -2 * rho * np.log(big + np.asarray(t, np.float64) / (n - 1) * (small - big))


def test_stage2_target_lands_where_two_teacher_ddim_steps_land(batch):
  teacher_config, _, params = _teacher()
  # EDM's grid (configs/fashion_mnist.py's until session 14) keeps λ_min away from the paper
  # grid's −20, where x̂ = (z − σ ε̂)/α would magnify the float32 network's rounding 2·10⁴ times.
  teacher_config.sample.update(grid='edm', logsnr_min=-8.764, logsnr_max=12.43)
  s1 = distill_train.student_config(run_config(steps=5), teacher_config, 't', 0)
  s2 = distill_train.student_config(run_config(stage='progressive', rounds=1), s1, 's1', 1)
  assert s2.sample.steps == 3 and s2.sample.method == 'ddim'
  model = model_lib.from_config(s1)
  params = _perturbed(_init_state(model, s1, params).params, seed=7)
  example = jax.jit(functools.partial(distill.progressive_example, teacher=model, config=s2))
  z, logsnr, labels, w, target = example(jax.random.key(2), batch, params)
  apply = jax.jit(model.apply)

  # The student's grid (3 points) is every other point of the teacher's (5 points).
  lam = np.asarray(logsnr, np.float64)
  j = np.argmin(np.abs(lam[:, None] - _edm_grid64(np.arange(2), 3)[None]), axis=1)
  assert set(j) == {0, 1}
  np.testing.assert_allclose(lam, _edm_grid64(j, 3), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lam, _edm_grid64(2 * j, 5), rtol=1e-5, atol=1e-5)

  def teacher_x(z, lam):   # the teacher's clipped x̂, in float64 around a float32 network
    eps = np.asarray(apply({'params': params}, jnp.asarray(z, jnp.float32),
                                 jnp.asarray(lam, jnp.float32), labels, w), np.float64)
    a, s = (_b(v) for v in _alpha_sigma64(lam))
    return np.clip((z - s * eps) / a, -1, 1)

  def ddim(z, x, lam, lam_next):
    (a, s), (a2, s2) = ((_b(v) for v in _alpha_sigma64(l)) for l in (lam, lam_next))
    return a2 * x + s2 * (z - a * x) / s

  lam_mid, lam_next = _edm_grid64(2 * j + 1, 5), _edm_grid64(2 * j + 2, 5)
  z64 = np.asarray(z, np.float64)
  z_mid = ddim(z64, teacher_x(z64, lam), lam, lam_mid)
  z_two = ddim(z_mid, teacher_x(z_mid, lam_mid), lam_mid, lam_next)
  a, s = (_b(v) for v in _alpha_sigma64(lam))
  x_target = (z64 - s * np.asarray(target, np.float64)) / a   # the student's ε target as x̂
  z_one = ddim(z64, x_target, lam, lam_next)
  assert np.abs(z_two - ddim(z64, teacher_x(z64, lam), lam, lam_next)).max() > 1e-2
  np.testing.assert_allclose(z_one, z_two, rtol=1e-4, atol=1e-4)


# --- Runs: resume, SIGTERM, bad inputs -------------------------------------------------------

def _command(teacher, workdir, *flags):
  return [sys.executable, os.path.join(ROOT, 'launch', 'distill.py'),
          f'--config={os.path.join(ROOT, "configs", "distill.py")}:tiny', f'--teacher={teacher}',
          f'--workdir={workdir}', '--cpu_devices=8', *flags]


def _assert_same_state(a, b):
  assert int(a.step) == int(b.step)
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  return _save_teacher(str(tmp_path_factory.mktemp('teacher') / 'run'))


@pytest.fixture(scope='module')
def straight(teacher, tmp_path_factory):
  """FINAL stage-1 steps without interruption."""
  config = run_config(train_num_steps=FINAL, train_log_every=FINAL, train_checkpoint_every=1000)
  return distill_train.run(config, teacher, str(tmp_path_factory.mktemp('straight') / 'run'))


def test_stage1_sigterm_saves_and_resume_is_exact(teacher, straight, tmp_path):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'log.txt')
  with open(log, 'w') as f:
    proc = subprocess.Popen(_command(teacher, workdir, f'--config.train.num_steps={FINAL}',
                                     '--config.train.log_every=1',
                                     '--config.train.checkpoint_every=1000'),
                            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
  launcher.wait_until(lambda: 'step 2:' in open(log).read(), proc, what='step 2')
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 75
  out = open(log).read()
  stopped = int(re.search(rf'stopped by SIGTERM at step (\d+) of {FINAL} in {workdir}; the '
                          r'checkpoint is saved\. Rerun the same command to resume\.', out).group(1))
  assert 'Traceback' not in out and 2 <= stopped < FINAL
  assert launcher.committed_steps(workdir) == [stopped]

  config = run_config(train_num_steps=FINAL, train_log_every=FINAL, train_checkpoint_every=1000)
  resumed = distill_train.run(config, teacher, workdir)
  assert resumed.finished
  _assert_same_state(resumed.state, straight.state)
  pipe = cfg_jax.load(workdir)
  assert pipe.distilled and pipe.config.distill.teacher == os.path.abspath(teacher)
  assert pipe.sample(np.arange(3), w=[0, 2, 4]).shape == (3, 28, 28, 1)


class _StopAt:
  """A stop signal that arrives at a given step."""

  def __init__(self, step):
    self.step, self.received = step, None

  def reached(self, step):
    self.received = 'SIGTERM' if step >= self.step else None
    return self.received is not None

  def close(self):
    pass


def test_stage2_round_resumes_exactly_and_is_sampled_with_half_the_steps(straight, tmp_path):
  config = run_config(stage='progressive', rounds=1, train_num_steps=4, train_log_every=100)
  whole = distill_train.run(config, straight.workdir, str(tmp_path / 'whole'))
  assert whole.finished and whole.workdir == str(tmp_path / 'whole' / 'round_1')

  stopped = distill_train.run(config, straight.workdir, str(tmp_path / 'cut'), stop=_StopAt(2))
  assert not stopped.finished and int(stopped.state.step) == 2
  resumed = distill_train.run(config, straight.workdir, str(tmp_path / 'cut'))
  _assert_same_state(resumed.state, whole.state)

  pipe = cfg_jax.load(resumed.workdir)
  assert pipe.config.sample.steps == 3 and 'progressive distillation round 1' in repr(pipe)


def test_bad_inputs_cost_one_line_and_exit_2(teacher, straight, tmp_path):
  config = tiny_config()
  config.data.pad_to = 32
  other = _save_teacher(str(tmp_path / 'other'), config)   # a teacher of another image size
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  cases = {
      'no teacher': (_command(empty, str(tmp_path / 'a')),
                     f'no teacher checkpoint in {empty}/checkpoints; give --teacher a workdir '
                     'trained with launch/train.py'),
      'empty w range': (_command(teacher, str(tmp_path / 'b'), '--config.w_min=3',
                                 '--config.w_max=1'),
                        'the w range [config.w_min, config.w_max] = [3.0, 1.0] must be finite '
                        'and not empty'),
      'w not finite': (_command(teacher, str(tmp_path / 'c'), '--config.w_max=inf'),
                       'the w range [config.w_min, config.w_max] = [0.0, inf] must be finite'),
      'other teacher': (_command(other, straight.workdir),
                        f'the teacher {other} does not match the student in {straight.workdir} '
                        '(data.pad_to=0 there, 32 now'),
      'same workdir': (_command(teacher, teacher),
                       f'--workdir={teacher} is the teacher\'s workdir; give the student a new '
                       '--workdir'),
      'not distilled': (_command(teacher, str(tmp_path / 'd'), '--config.stage=progressive'),
                        f'the teacher {teacher} is not a guidance-distilled student'),
  }
  run = lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
  with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
    results = dict(zip(cases, pool.map(run, [cmd for cmd, _ in cases.values()])))
  for name, (_, message) in cases.items():
    proc = results[name]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode == 2 and len(errors) == 1, (name, proc.stderr[-2000:])
    assert message in errors[0], (name, errors[0])
    assert 'Traceback' not in proc.stderr, name
