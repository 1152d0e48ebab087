"""Checkpoints follow the TrainState's own fields, and a failed restore is called corrupt only
when its bytes are missing or damaged. (Damage, and resuming with another seed or batch size,
through the real launcher: tests/test_bad_input.py.)"""
import dataclasses
import logging
import os
import shutil
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cfg_jax import checkpoint, objective, sharding, train
from conftest import tiny_config


@flax.struct.dataclass
class CountingState(objective.TrainState):
  """A TrainState with one more field, as a later change might add."""
  skipped: jax.Array


def _abstract(state):
  """A restore target: each leaf's shape, dtype and sharding."""
  return sharding.abstract(state, jax.tree.map(lambda x: x.sharding, state))


def _save(workdir, state, config):
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, state, config)
  mngr.wait_until_finished()
  return checkpoint.manager(workdir, read_only=True)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """(config, initial state on 8 devices, read-only manager of its checkpoint at step 0)."""
  config = tiny_config()
  init = train.build(config, sharding.make_mesh(config.mesh)).init
  state = init(jax.random.key(0))
  return config, state, _save(str(tmp_path_factory.mktemp('ckpt')), state, config)


def test_added_state_field_round_trips(saved, tmp_path):
  config, state, _ = saved
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  counting = CountingState(**fields, skipped=jnp.array(3, jnp.int32))
  restored = checkpoint.restore(_save(str(tmp_path), counting, config), _abstract(counting))
  assert type(restored) is CountingState
  assert int(restored.skipped) == 3
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(counting), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_without_a_new_field_says_so(saved):
  _, state, mngr = saved
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  counting = CountingState(**fields, skipped=jnp.array(0, jnp.int32))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'checkpoint 0 in .* has no state field\(s\) skipped \(it was written '
                           r'before they existed\)'):
    checkpoint.restore(mngr, _abstract(counting))


def test_sharding_mismatch_is_not_called_corrupt(saved):
  """A real restore onto a layout the arrays cannot take: the error is jax's own."""
  _, state, mngr = saved
  mesh = jax.tree.leaves(state.params)[0].sharding.mesh
  over_all = NamedSharding(mesh, P(sharding.BATCH_AXES))   # dimension 0 split 8 ways
  target = _abstract(state)
  target = target.replace(ema_params=jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=over_all if x.shape[0] % 8
                                     else x.sharding), target.ema_params))
  with pytest.raises(Exception) as info:
    checkpoint.restore(mngr, target)
  assert not isinstance(info.value, checkpoint.CheckpointError)
  assert 'divide' in str(info.value) and 'corrupt' not in str(info.value)
  assert any('nothing in this error says the checkpoint is damaged' in note
             for note in info.value.__notes__)


@pytest.mark.parametrize('error, expected', [
    (PermissionError(13, 'Permission denied', '/ckpt/0/train_state/d/ab12'),
     r'checkpoint 0 in .* cannot be read: permission denied \(\[Errno 13\] Permission denied: '
     r"'/ckpt/0/train_state/d/ab12'\); give this user read access to .*/0 \(nothing says the "
     r'checkpoint is damaged\)'),
    (jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate '
                                '1.10GiB.'),
     r'checkpoint 0 in .* does not fit in device memory \(RESOURCE_EXHAUSTED: Out of memory .*\); '
     r'the checkpoint is not damaged: restore it on more devices, or shard the state with '
     r'--config.mesh.fsdp'),
    # For contrast, tensorstore's words for a file cut short (the real thing: test_bad_input).
    (ValueError('OUT_OF_RANGE: Error reading "params.Conv_0.kernel/.zarray"'),
     r'checkpoint 0 in .* is incomplete or corrupt \(OUT_OF_RANGE: Error reading .*\); move '
     r'.*/0 aside'),
])
def test_restore_failure_names_its_cause(saved, monkeypatch, error, expected):
  _, state, mngr = saved

  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(mngr, 'restore', fail)
  with pytest.raises(checkpoint.CheckpointError, match=expected):
    checkpoint.restore(mngr, _abstract(state))


def test_quieting_a_failed_restore_leaves_process_hooks_alone(saved, tmp_path):
  """orbax's late reports of a failed restore are dropped inside the restore call only."""
  _, state, mngr = saved
  workdir = str(tmp_path / 'run')
  shutil.copytree(os.path.dirname(str(mngr.directory)), workdir)
  step = os.path.join(workdir, 'checkpoints', '0')
  with open(os.path.join(step, 'config', 'metadata'), 'w') as f:
    f.write('{"seed": 0, "trai')   # cut short
  for folder, _, files in os.walk(os.path.join(step, 'train_state')):
    if os.path.basename(folder) == 'd':
      for name in files:
        os.truncate(os.path.join(folder, name), 10)
  asyncio_log = logging.getLogger('asyncio')
  hook, filters, level = sys.unraisablehook, list(asyncio_log.filters), asyncio_log.level
  damaged = checkpoint.manager(workdir, read_only=True)
  for read in (checkpoint.restore_config, lambda m: checkpoint.restore(m, _abstract(state))):
    with pytest.raises(checkpoint.CheckpointError, match='is incomplete or corrupt'):
      read(damaged)
    assert sys.unraisablehook is hook
    assert asyncio_log.filters == filters and asyncio_log.level == level


def test_a_saved_config_without_newer_settings_gets_their_defaults():
  """A checkpoint written before a setting existed restores with that setting's default."""
  from cfg_jax import config_lib
  saved = config_lib.base_config().to_dict()
  del saved['sample']['guidance_rule'], saved['diffusion']['train_logsnr']
  saved['model']['channel_mult'] = [1, 2]          # JSON's lists become tuples again
  config = checkpoint.config_from_json(saved)
  assert config.sample.guidance_rule == 'cfg' and config.diffusion.train_logsnr == 'cosine'
  assert config.model.channel_mult == (1, 2)
