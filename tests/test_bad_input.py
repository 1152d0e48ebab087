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


def _data_dirs(tmp):
  """Idx folders with a label out of range, too few or too many labels, a truncated image file."""
  source = data.load_fashion_mnist('train')
  images, labels = source.images[:64, ..., 0], source.labels[:80]
  dirs = {name: os.path.join(tmp, name) for name in ('bad_labels', 'short', 'long', 'truncated')}
  bad = labels[:64].copy()
  bad[5] = 12
  _write_idx(dirs['bad_labels'], images, bad)
  _write_idx(dirs['short'], images, labels[:50])
  _write_idx(dirs['long'], images, labels)
  _write_idx(dirs['truncated'], images, labels[:64])
  path = os.path.join(dirs['truncated'], 'train-images-idx3-ubyte.gz')
  os.truncate(path, os.path.getsize(path) // 2)
  return dirs


def _cases(tmp):
  """name -> (launcher flags, expected message parts, prepare(workdir) or None, workdir)."""
  dirs = _data_dirs(tmp)
  not_a_dir = _not_a_dir(tmp)
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
      'labels_out_of_range': ([f'--config.data.dir={dirs["bad_labels"]}'],
                              ['label 12 is outside [0, 10)', 'config.data.num_classes']),
      'labels_too_few': ([f'--config.data.dir={dirs["short"]}'],
                         ['train-images-idx3-ubyte.gz holds 64 images but',
                          'train-labels-idx1-ubyte.gz 50 labels', 'do not belong together',
                          'apt-get install --reinstall dataset-fashion-mnist']),
      'labels_too_many': ([f'--config.data.dir={dirs["long"]}'],
                          ['holds 64 images but', '80 labels']),
      'images_truncated': ([f'--config.data.dir={dirs["truncated"]}'],
                           [f'{dirs["truncated"]}/train-images-idx3-ubyte.gz is truncated or '
                            'corrupt', 'apt-get install --reinstall dataset-fashion-mnist']),
      'image_size_mismatch': (['--config.data.image_size=32'],
                              ["fashion_mnist split 'train' has images of shape (28, 28, 1), the "
                               'config says (32, 32, 1)', 'config.data.image_size']),
      'nonfinite_setting': (['--config.train.learning_rate=nan'],
                            ['config.train.learning_rate=nan must be finite and > 0']),
      'mesh_size_zero': (['--config.mesh.fsdp=0'], ['config.mesh.fsdp=0 must be -1 (the rest) or >= 1']),
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
      'resume_other_norm_groups': (['--config.model.norm_groups=4'],
                                   ['was trained with model.norm_groups=8, not 4',
                                    'Rerun with --config.model.norm_groups=8']),
      'resume_other_prediction': (['--config.diffusion.prediction=eps'],
                                  ['was trained with diffusion.prediction=v, not eps',
                                   'Rerun with --config.diffusion.prediction=v']),
      'resume_other_seed': (['--config.seed=1'],
                            ['was trained with seed=0, not seed=1', 'Rerun with --config.seed=0']),
      'unwritable_workdir': ([], [f'workdir {not_a_dir}/run cannot be written', '--workdir'],
                             None, os.path.join(not_a_dir, 'run')),
  }


def _not_a_dir(tmp):
  path = os.path.join(tmp, 'a_file')
  if not os.path.exists(path):
    with open(path, 'w') as f:
      f.write('not a folder')
  return path


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(a scratch folder, a workdir trained for 2 steps with a checkpoint at step 2)."""
  tmp = str(tmp_path_factory.mktemp('bad_input'))
  workdir = os.path.join(tmp, 'trained')
  train.train(tiny_config(num_steps=2, checkpoint_every=2), workdir)
  return tmp, workdir


@pytest.fixture(scope='module')
def outcomes(trained):
  """Runs every case against its own copy of a trained workdir; returns name -> results."""
  tmp, trained = trained
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


def _assert_one_line(proc, expected):
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(errors) == 1, proc.stderr[-3000:]
  for part in expected:
    assert part in errors[0]
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('case', [
    'unknown_key', 'wrong_type', 'config_file_missing', 'unknown_dataset', 'data_missing',
    'labels_out_of_range', 'labels_too_few', 'labels_too_many', 'images_truncated',
    'image_size_mismatch', 'nonfinite_setting', 'mesh_size_zero', 'batch_indivisible',
    'mesh_mismatch', 'incompatible_checkpoint', 'corrupt_checkpoint', 'partial_checkpoint',
    'resume_other_batch_size', 'resume_other_norm_groups', 'resume_other_prediction',
    'resume_other_seed',
    'unwritable_workdir'])
def test_bad_input_fails_in_one_line_and_changes_nothing(outcomes, case):
  proc, expected, watched, before = outcomes[case]
  _assert_one_line(proc, expected)
  assert launcher.digest(watched) == before


def _tool_cases(tmp, workdir):
  """name -> (launcher, flags, expected message parts), the other launchers on a trained workdir."""
  bad_out = os.path.join(_not_a_dir(tmp), 'out')
  w = f'--workdir={workdir}'
  return {
      'sample_nan_w': ('sample.py', [w, '--guidance=0,nan'],
                       ["--guidance must be finite numbers >= -1, got '0,nan'"]),
      'sample_unwritable_out': ('sample.py', [w, f'--out={bad_out}'],
                                [f'--out={bad_out} cannot be written (Not a directory)']),
      'sample_missing_step': ('sample.py', [w, '--step=7'],
                              ['no checkpoint at step 7 in', 'it holds steps 2']),
      'sample_too_large': ('sample.py', [w, '--per_class=100000000'],
                           ['4,000,000,000 samples need up to', 'GiB free; lower --per_class']),
      'sample_flag_type': ('sample.py', [w, '--per_class=abc'], ['--per_class', 'abc']),
      'sample_interval_reversed': ('sample.py', [w, '--interval=3,1'],
                                   ['--interval=3,1 must be finite with low < high']),
      'sample_rescale_nan': ('sample.py', [w, '--rescale=nan'],
                             ['--rescale=nan must be a finite number in [0, 1]']),
      'sample_unknown_rule': ('sample.py', [w, '--guidance_rule=cfg+'], ['--guidance_rule', 'cfg+']),
      'sample_one_step': ('sample.py', [w, '--steps=1'], ['--steps must be >= 2, got 1']),
      'evaluate_variance_v': ('evaluate.py', [w, '--variance_v=2'],
                              ['--variance_v must lie in [0, 1], got 2.0']),
      'evaluate_max_fd_alone': ('evaluate.py', [w, '--max_fd=2'], ['--max_fd goes with --choose']),
      'evaluate_step_0': ('evaluate.py', [w, '--step=0'],
                          ['no checkpoint at step 0 in', 'it holds steps 2']),
      'evaluate_too_large': ('evaluate.py', [w, '--num_samples=10000000000'],
                             ['--num_samples=10000000000 holds', 'GiB of samples per w in memory, '
                              'this machine has', 'lower --num_samples']),
      'evaluate_unwritable_out': ('evaluate.py', [w, f'--out={bad_out}'],
                                  [f'--out={bad_out} cannot be written']),
      'evaluate_distributed': ('evaluate.py', [w, '--distributed'],
                               ['--distributed: this tool runs in one process']),
      'classifier_unwritable_out': ('train_classifier.py', [f'--out={bad_out}'],
                                    [f'--out={bad_out} cannot be written']),
      'compare_unwritable_out': ('compare.py', [f'--evals={tmp},{tmp}', f'--out={bad_out}/cmp'],
                                 [f'--out={bad_out} cannot be written']),
      'aot_no_devices': ('aot_report.py', ['--config=configs/fashion_mnist.py', '--devices=0'],
                         ['--devices must be >= 1, got 0']),
  }


@pytest.fixture(scope='module')
def tool_outcomes(trained):
  tmp, workdir = trained
  before = launcher.digest(workdir)
  cases = _tool_cases(tmp, workdir)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    procs = {name: pool.submit(launcher.run_tool, tool, *flags, timeout=600)
             for name, (tool, flags, _) in cases.items()}
    results = {name: (procs[name].result(), cases[name][2]) for name in cases}
  return results, before, launcher.digest(workdir)


@pytest.mark.parametrize('case', [
    'sample_nan_w', 'sample_unwritable_out', 'sample_missing_step', 'sample_too_large',
    'sample_flag_type', 'sample_interval_reversed', 'sample_rescale_nan', 'sample_unknown_rule',
    'sample_one_step', 'evaluate_variance_v',
    'evaluate_step_0', 'evaluate_too_large', 'evaluate_unwritable_out', 'evaluate_distributed',
    'evaluate_max_fd_alone',
    'classifier_unwritable_out', 'compare_unwritable_out', 'aot_no_devices'])
def test_other_launchers_check_their_input_before_working(tool_outcomes, case):
  results, before, after = tool_outcomes
  _assert_one_line(*results[case])
  assert after == before   # the trained workdir: no samples/ or eval/ folder appeared


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
