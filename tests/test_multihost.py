"""Two processes on this machine (coordinator on 127.0.0.1, one CPU device each, gloo collectives)
train the tiny config together, stop together when one of them gets SIGTERM, resume, and end
with the same bits as one process with two devices on the same global batches."""
import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np

import launcher
from cfg_jax import checkpoint, sharding, train
from conftest import tiny_config

FINAL = 8


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(commands, tmp_path, phase):
  logs = [str(tmp_path / f'{phase}{i}.log') for i in range(len(commands))]
  procs = []
  for command, log in zip(commands, logs):
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=launcher.ROOT))
  return procs, logs


def _read(path):
  with open(path) as f:
    return f.read()


def test_two_processes_train_stop_and_resume_like_one(tmp_path):
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  flags = [f'--config.train.num_steps={FINAL}', '--config.train.checkpoint_every=1000',
           '--config.train.log_every=1']
  pair = lambda: [launcher.command(two, *flags, f'--coordinator_address=127.0.0.1:{port}',
                                   '--num_processes=2', f'--process_id={i}', devices=1)
                  for i in range(2)]

  # Phase 1: the pair, and beside it one process with two devices that runs straight through.
  port = _free_port()
  procs, logs = _start(pair() + [launcher.command(one, *flags, devices=2)], tmp_path, 'a')
  deadline = time.monotonic() + 400
  while 'step 2:' not in _read(logs[0]):
    assert procs[0].poll() is None and time.monotonic() < deadline, _read(logs[0])[-2000:]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)   # only process 1 is told; both must stop at one step
  codes = [p.wait(timeout=400) for p in procs]
  outs = [_read(log) for log in logs]
  assert codes == [75, 75, 0], '\n'.join(o[-1500:] for o in outs)
  stopped = [int(re.search(r'stopped by SIGTERM at step (\d+)', o).group(1)) for o in outs[:2]]
  assert stopped[0] == stopped[1] < FINAL
  assert launcher.committed_steps(two) == [stopped[0]]
  # Progress comes from process 0 only; both processes wrote their part of the checkpoint.
  assert 'step 1:' in outs[0] and 'step 1:' not in outs[1]
  assert os.path.isdir(os.path.join(two, 'checkpoints', str(stopped[0]), 'train_state',
                                    'ocdbt.process_1'))

  # Phase 2: the same command resumes the pair.
  port = _free_port()
  procs, logs = _start(pair(), tmp_path, 'b')
  assert [p.wait(timeout=400) for p in procs] == [0, 0], _read(logs[0])[-2000:]
  assert f'resumed from step {stopped[0]}' in _read(logs[0])

  # The same 2-device program, its all-reduces over gloo or inside one process: the same bits.
  config = tiny_config(num_steps=FINAL)
  abstract = train.build(config, sharding.make_mesh(config.mesh)).abstract_state
  restore = lambda w: checkpoint.restore(checkpoint.manager(w, read_only=True), abstract)
  a, b = restore(two), restore(one)
  assert int(a.step) == int(b.step) == FINAL
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)
