"""Preemption and crashes: SIGTERM and Ctrl-C save and exit, SIGKILL loses only uncommitted steps,
resume is bit-identical, a second trainer in a live workdir is refused (a killed one's lock is
not), half-written checkpoints are ignored, non-finite losses never reach a checkpoint."""
import os
import re
import shutil
import signal
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launcher
from cfg_jax import checkpoint, data, train, workdir_lock
from conftest import tiny_config

FINAL = 12   # steps of the interrupted and the uninterrupted run


def _assert_same_state(a, b):
  assert int(a.step) == int(b.step)
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


def _log_has(path, pattern):
  with open(path) as f:
    return re.search(pattern, f.read()) is not None


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """FINAL steps without interruption: what every interrupted and resumed run must end with."""
  config = tiny_config(num_steps=FINAL, log_every=FINAL, checkpoint_every=1000)
  return train.train(config, str(tmp_path_factory.mktemp('straight') / 'run'))


def test_sigterm_saves_sigkill_loses_only_uncommitted_steps_resume_is_exact(tmp_path, straight):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'log.txt')
  flags = (f'--config.train.num_steps={FINAL}', '--config.train.log_every=1')

  # 1. SIGTERM (a preempted TPU VM): save after the current step, exit 75 with a message.
  proc = launcher.start(workdir, *flags, '--config.train.checkpoint_every=1000', log_path=log)
  launcher.wait_until(lambda: _log_has(log, r'step 2:'), proc, what='step 2')
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 75
  with open(log) as f:
    out = f.read()
  stopped = int(re.search(r'stopped by SIGTERM at step (\d+) of 12', out).group(1))
  assert 'Rerun the same command to resume' in out and 'Traceback' not in out
  assert 2 <= stopped < FINAL
  assert launcher.committed_steps(workdir) == [stopped]

  # 2. SIGKILL (no warning) right after a checkpoint commits, often while the next is written.
  proc = launcher.start(workdir, *flags, '--config.train.checkpoint_every=1', log_path=log)
  target = stopped + 3
  launcher.wait_until(lambda: any(s >= target for s in launcher.committed_steps(workdir)), proc,
                      what=f'a checkpoint at step >= {target}')
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  last = checkpoint.manager(workdir, read_only=True).latest_step()
  assert target <= last < FINAL and last == launcher.committed_steps(workdir)[-1]

  # 3. The same command resumes from the last committed step and ends where an uninterrupted
  # run ends, bit for bit (same mesh, same (seed, step) randomness, same data positions).
  config = tiny_config(num_steps=FINAL, log_every=FINAL, checkpoint_every=1000)
  resumed = train.train(config, workdir)
  _assert_same_state(resumed, straight)
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]


def test_ctrl_c_saves_and_the_rerun_resumes_exactly(tmp_path, straight):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'log.txt')
  proc = launcher.start(workdir, f'--config.train.num_steps={FINAL}', '--config.train.log_every=1',
                        '--config.train.checkpoint_every=1000', log_path=log)
  launcher.wait_until(lambda: _log_has(log, r'step 2:'), proc, what='step 2')
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=120) == 75
  with open(log) as f:
    out = f.read()
  stopped = int(re.search(r'stopped by SIGINT at step (\d+) of 12; the checkpoint is saved in '
                          r'\S+\. Rerun the same command to resume\.', out).group(1))
  assert 'Traceback' not in out and 'KeyboardInterrupt' not in out
  assert 2 <= stopped < FINAL and launcher.committed_steps(workdir) == [stopped]
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))   # released on exit

  config = tiny_config(num_steps=FINAL, log_every=FINAL, checkpoint_every=1000)
  _assert_same_state(train.train(config, workdir), straight)


def test_second_trainer_is_refused_and_a_killed_trainers_lock_is_not(tmp_path):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'log.txt')
  first = launcher.start(workdir, '--config.train.num_steps=100000', '--config.train.log_every=1',
                         '--config.train.checkpoint_every=1000', log_path=log)
  launcher.wait_until(lambda: _log_has(log, r'step 1:'), first, what='step 1')

  second = launcher.run(workdir, '--config.train.num_steps=4')
  errors = [line for line in second.stderr.splitlines() if line.startswith('error:')]
  assert second.returncode == 2 and len(errors) == 1, second.stderr[-3000:]
  assert (f'{workdir} is in use by another run (pid {first.pid} on host {socket.gethostname()}'
          in errors[0]) and f'kill -INT {first.pid}' in errors[0]
  assert 'Traceback' not in second.stderr
  assert first.poll() is None                      # the first one trains on, undisturbed

  first.send_signal(signal.SIGKILL)                # no chance to release: the file stays behind
  assert first.wait(timeout=60) == -signal.SIGKILL
  lock = os.path.join(workdir, workdir_lock.LOCK_FILE)
  assert f'"pid": {first.pid}' in open(lock).read()
  state = train.train(tiny_config(num_steps=2), workdir)
  assert int(state.step) == 2 and not os.path.exists(lock)


@pytest.fixture(scope='module')
def four_steps(tmp_path_factory):
  """A workdir with checkpoints at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('four') / 'run')
  train.train(tiny_config(num_steps=4, checkpoint_every=2), workdir)
  return workdir


def test_half_written_checkpoint_is_never_picked_up(four_steps, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(four_steps, workdir)
  ckpt = os.path.join(workdir, 'checkpoints')
  # What a kill during a save leaves: orbax's temporary folder, only partly written.
  partial = os.path.join(ckpt, '6.orbax-checkpoint-tmp-1763830000000000')
  shutil.copytree(os.path.join(ckpt, '4'), partial)
  shutil.rmtree(os.path.join(partial, 'train_state'))
  assert checkpoint.manager(workdir, read_only=True).latest_step() == 4

  state = train.train(tiny_config(num_steps=5, checkpoint_every=2), workdir)
  assert int(state.step) == 5
  assert launcher.committed_steps(workdir) == [2, 4, 5]
  assert not os.path.exists(partial)   # the writer deleted the leftover


def _nan_images(images, pad_to=0):
  del pad_to
  return jnp.full(images.shape, jnp.nan, jnp.float32)


@pytest.mark.parametrize('checkpoint_every,stops_at', [(1, 5), (3, 6)])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(four_steps, tmp_path, monkeypatch,
                                                                 checkpoint_every, stops_at):
  """The host reads the non-finite count only at log and checkpoint steps; a bad step between
  them is still caught before the next save (log_every=5 lies beyond the checkpoint at 6)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(four_steps, workdir)
  before = launcher.digest(workdir)
  monkeypatch.setattr(data, 'to_model_range', _nan_images)
  config = tiny_config(num_steps=8, checkpoint_every=checkpoint_every, log_every=100)
  with pytest.raises(train.NonFiniteError,
                     match=rf'step {stops_at} .*last good checkpoint is kept'):
    train.train(config, workdir)
  assert launcher.digest(workdir) == before


def test_nonfinite_loss_skip_leaves_parameters_unchanged(four_steps, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  shutil.copytree(four_steps, workdir)
  config = tiny_config(num_steps=4)
  good = train.train(config, workdir)   # restores step 4, trains nothing
  monkeypatch.setattr(data, 'to_model_range', _nan_images)
  config = tiny_config(num_steps=6, checkpoint_every=1, on_nonfinite='skip')
  state = train.train(config, workdir)
  assert int(state.step) == 6
  for name in ('params', 'ema_params', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(good, name))):
      if np.issubdtype(a.dtype, np.integer):   # step counters advance with state.step
        assert int(a) == int(state.step) == 6, name
      else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
