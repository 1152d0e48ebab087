"""Two processes on this machine (coordinator on 127.0.0.1, one CPU device each, gloo collectives)
train the tiny config together; the result matches one process on the same global batch."""
import os
import socket
import subprocess

import jax
import numpy as np

import launcher
from cfg_jax import checkpoint, sharding, train
from conftest import tiny_config

STEPS = 4


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
  """Two processes with one device each, and one process with two devices, side by side."""
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  flags = [f'--config.train.num_steps={STEPS}', '--config.train.checkpoint_every=2',
           '--config.train.log_every=1']
  distributed = [f'--coordinator_address=127.0.0.1:{_free_port()}', '--num_processes=2']
  commands = [launcher.command(two, *flags, *distributed, f'--process_id={i}', devices=1)
              for i in range(2)] + [launcher.command(one, *flags, devices=2)]
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=launcher.ROOT) for c in commands]
  outs = [p.communicate(timeout=540)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], '\n'.join(o[-2000:] for o in outs)

  # Progress comes from process 0 only; both processes wrote their part of each checkpoint.
  assert f'step {STEPS}:' in outs[0] and 'step 1:' not in outs[1]
  assert launcher.committed_steps(two) == [2, STEPS]
  assert os.path.isdir(os.path.join(two, 'checkpoints', str(STEPS), 'train_state',
                                    'ocdbt.process_1'))

  # The same 2-device program, its all-reduces over gloo or in one process: the same bits.
  config = tiny_config(num_steps=STEPS)
  abstract = train.build(config, sharding.make_mesh(config.mesh))[3]
  restore = lambda w: checkpoint.restore(checkpoint.manager(w, read_only=True), abstract)
  a, b = restore(two), restore(one)
  assert int(a.step) == int(b.step) == STEPS
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)
