"""Expected mistakes: one line on stderr saying what is wrong and what to do, exit status 2, no
traceback, and the workdir (with its checkpoints) byte-for-byte as it was.

Every case runs the real launcher in its own process; they run side by side to save time.
"""
import concurrent.futures
import gzip
import os
import shutil

import numpy as np
import pytest

import launcher
from cfg_jax import config_lib, data, train
from conftest import tiny_config


def _write_idx(folder, images, labels):
  """Fashion-MNIST's idx format, as the loader reads it."""
  os.makedirs(folder)
  for kind, array in (('images-idx3', images), ('labels-idx1', labels.astype(np.uint8))):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, '>u4').tobytes()
    with gzip.open(os.path.join(folder, f'train-{kind}-ubyte.gz'), 'wb') as f:
      f.write(header + array.tobytes())


def _corrupt(workdir):
  """Truncates every array file of the latest checkpoint's train state (a damaged disk)."""
  root = os.path.join(workdir, 'checkpoints', '2', 'train_state')
  for folder, _, files in os.walk(root):
    if os.path.basename(folder) == 'd':
      for name in files:
        os.truncate(os.path.join(folder, name), 10)


def _partial(workdir):
  """A step folder with an item missing (e.g. copied by hand, or a disk that filled up)."""
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '2', 'train_state'))


def _cases(tmp):
  """name -> (launcher flags, expected message parts, prepare(workdir) or None, workdir)."""
  labels_dir = os.path.join(tmp, 'bad_labels')
  source = data.load_fashion_mnist('train')
  labels = source.labels[:64].copy()
  labels[5] = 12
  _write_idx(labels_dir, source.images[:64, ..., 0], labels)
  not_a_dir = os.path.join(tmp, 'a_file')
  with open(not_a_dir, 'w') as f:
    f.write('not a folder')
  return {
      'unknown_key': (['--config.train.batchsize=8'],
                      ['unknown config key in --config.train.batchsize; did you mean batch_size?']),
      'wrong_type': (['--config.train.batch_size=abc'],
                     ['--config.train.batch_size=abc', "invalid literal for int()"]),
      'config_file_missing': (['--config=configs/nope.py'],
                              ['cannot load the config file', "'configs/nope.py'"]),
      'unknown_dataset': (['--config.data.name=no_such_dataset'],
                          ["TFDS could not provide 'no_such_dataset'", 'tfds build']),
      'data_missing': ([f'--config.data.dir={tmp}/nowhere'],
                       ['Fashion-MNIST not found', 'apt-get install dataset-fashion-mnist',
                        '--config.data.dir']),
      'labels_out_of_range': ([f'--config.data.dir={labels_dir}'],
                              ['label 12 is outside [0, 10)', 'config.data.num_classes']),
      'batch_indivisible': (['--config.train.batch_size=9', '--cpu_devices=2'],
                            ['batch_size=9 does not divide over 2 devices', 'multiple of 2']),
      'mesh_mismatch': (['--config.mesh.fsdp=3'],
                        ['data=2 x fsdp=3 does not match the 8 devices', '--config.mesh.fsdp']),
      'incompatible_checkpoint': (['--config.model.channels=16'],
                                  ['different model config (model.channels=8 there, 16 now)',
                                   'AttentionBlock_0/GroupNorm_0/bias (16,) in the checkpoint '
                                   'vs (32,) now', 'new --workdir']),
      'corrupt_checkpoint': ([], ['checkpoint 2 in', 'is incomplete or corrupt',
                                  '/checkpoints/2 aside'], _corrupt),
      'partial_checkpoint': ([], ['checkpoint 2 in', 'is incomplete or corrupt',
                                  'Item "train_state" was not found'], _partial),
      'resume_other_batch_size': (['--config.train.batch_size=32'],
                                  ['checkpoint 2 in', 'was trained with train.batch_size=16, not '
                                   'train.batch_size=32', 'would change the data order and '
                                   'randomness', 'Rerun with --config.train.batch_size=16']),
      'resume_other_seed': (['--config.seed=1'],
                            ['was trained with seed=0, not seed=1', 'Rerun with --config.seed=0']),
      'unwritable_workdir': ([], [f'workdir {not_a_dir}/run cannot be written', '--workdir'],
                             None, os.path.join(not_a_dir, 'run')),
  }


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
  """Runs every case against its own copy of a trained workdir; returns name -> results."""
  tmp = str(tmp_path_factory.mktemp('bad_input'))
  trained = os.path.join(tmp, 'trained')
  train.train_and_evaluate(tiny_config(num_steps=2, checkpoint_every=2), trained)
  jobs = {}
  for name, (flags, expected, *rest) in _cases(tmp).items():
    prepare, workdir = (rest + [None, None])[:2]
    if workdir is None:
      workdir = os.path.join(tmp, name)
      shutil.copytree(trained, workdir)
      if prepare:
        prepare(workdir)
    watched = workdir if os.path.exists(workdir) else os.path.dirname(workdir)
    jobs[name] = (flags, expected, workdir, watched, launcher.digest(watched))
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    procs = {name: pool.submit(launcher.run, job[2], *job[0], timeout=600)
             for name, job in jobs.items()}
    return {name: (procs[name].result(), job[1], job[3], job[4]) for name, job in jobs.items()}


@pytest.mark.parametrize('case', [
    'unknown_key', 'wrong_type', 'config_file_missing', 'unknown_dataset', 'data_missing',
    'labels_out_of_range', 'batch_indivisible', 'mesh_mismatch', 'incompatible_checkpoint',
    'corrupt_checkpoint', 'partial_checkpoint', 'resume_other_batch_size', 'resume_other_seed',
    'unwritable_workdir'])
def test_bad_input_fails_in_one_line_and_changes_nothing(outcomes, case):
  proc, expected, watched, before = outcomes[case]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(errors) == 1, proc.stderr[-3000:]
  for part in expected:
    assert part in errors[0]
  assert 'Traceback' not in proc.stderr
  assert launcher.digest(watched) == before


def test_config_file_keys_and_types_are_checked():
  """Config files can add keys that flags cannot (ConfigDict accepts new fields)."""
  config = tiny_config()
  config.train.batchsize = 8
  with pytest.raises(config_lib.ConfigError,
                     match=r'unknown config key config.train.batchsize; did you mean '
                           r'config.train.batch_size\?'):
    config_lib.validate(config)
  config = tiny_config()
  config.data.dir = None
  with pytest.raises(config_lib.ConfigError, match=r'config.data.dir=None has the wrong type'):
    config_lib.validate(config)
  config_lib.validate(tiny_config())
