"""The README's main command, end to end, as a newcomer runs it: a fresh copy of the tree, a new
virtual environment made by launch/setup_env.sh with the quickstart's own (empty) extras, a
training run and the final guidance grid. The tiny config keeps it to seconds of training."""
import os
import shutil
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_copy(dest):
  """The files a clone of this tree would hold: tracked and untracked-but-not-ignored ones."""
  listing = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                           cwd=ROOT, capture_output=True, check=True).stdout
  for rel in filter(None, listing.decode().split('\0')):
    src = os.path.join(ROOT, rel)
    if os.path.isfile(src):
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, rel))


def test_quickstart_runs_to_its_grid_on_a_fresh_copy(tmp_path):
  clone, workdir = tmp_path / 'clone', tmp_path / 'run'
  _fresh_copy(clone)
  assert not (clone / '.venv').exists()
  env = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'PYTHONPATH')}
  env.update(CONFIG='configs/fashion_mnist.py:tiny', WORKDIR=str(workdir))
  result = subprocess.run(['bash', 'launch/quickstart.sh'], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

  # The new environment runs the copy's code, not this checkout's.
  where = subprocess.run([str(clone / '.venv' / 'bin' / 'python'), '-c',
                          'import cfg_jax; print(cfg_jax.__file__)'],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
  assert where.startswith(str(clone)), where

  # Training reached its last step; the grid follows the tiny config: 4 w × 10 classes × 2.
  assert (workdir / 'checkpoints' / '20').is_dir()
  assert not list((workdir / 'samples').glob('grid_*.png'))   # only launch/sample.py draws it
  final = workdir / 'samples' / 'final'
  assert (final / 'grid.png').stat().st_size > 1000
  with np.load(final / 'samples.npz') as f:
    images, labels, w = f['images'], f['labels'], f['w']
  assert images.shape == (80, 28, 28, 1)
  assert np.isfinite(images).all() and np.abs(images).max() <= 1.0
  np.testing.assert_array_equal(np.unique(w), np.float32([0, 0.3, 1, 4]))
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 8))
