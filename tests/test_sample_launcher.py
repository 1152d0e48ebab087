"""launch/sample.py writes, chunk by chunk, exactly what one in-process call of the pipeline draws,
from the checkpoint that --step names."""
import os

import numpy as np

import cfg_jax
import launcher
from cfg_jax import train
from conftest import tiny_config


def test_streamed_samples_match_one_call_at_the_chosen_step(tmp_path):
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'samples')
  train.train(tiny_config(num_steps=2, checkpoint_every=1), workdir)
  proc = launcher.run_tool('sample.py', f'--workdir={workdir}', '--step=1', '--guidance=0,1.5',
                           '--per_class=4', '--classes=3,7', '--batch_size=8', '--cpu_devices=8',
                           f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '16 samples (2 w x 2 classes x 4), 8 ancestral steps each: 256 network rows' in proc.stdout
  saved = np.load(os.path.join(out, 'samples.npz'))
  np.testing.assert_array_equal(saved['labels'], [3] * 4 + [7] * 4 + [3] * 4 + [7] * 4)
  np.testing.assert_array_equal(saved['w'], [0] * 8 + [1.5] * 8)
  assert os.path.getsize(os.path.join(out, 'grid.png')) > 1000

  # The launcher wrote two chunks of 8; here one call draws all 16 (8 devices, 8 per network call:
  # the same compiled program), so the second chunk must have used noise streams 8-15.
  at = {step: cfg_jax.load(workdir, step=step).sample(saved['labels'], saved['w'], batch_size=8)
        for step in (1, 2)}
  np.testing.assert_allclose(saved['images'], at[1], atol=1e-6)
  assert np.abs(at[2] - at[1]).max() > 1e-3   # --step mattered
