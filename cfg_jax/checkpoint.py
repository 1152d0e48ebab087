"""Orbax checkpoints of a run: train state, EMA parameters, resolved config, data position.

Items of each step (a Composite): `train_state` (step, params, optimizer state), `ema_params`
(a separate item so that inference restores nothing else), `config` (JSON) and `data` (JSON:
seed, step, global batch). Saves are asynchronous; orbax writes to a temporary folder and
renames it on commit, so a half-written step is never listed (and is deleted by the next
writer). Restores always take abstract targets with shardings, so a checkpoint restores onto
any mesh or a single device; parameter shapes are compared first, so a checkpoint of another
model fails with the names of the parameters that differ.
"""
import logging
import os
import sys

import jax
import ml_collections
import orbax.checkpoint as ocp

from cfg_jax.training import TrainState


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, or does not fit the model being restored."""


def checkpoint_dir(workdir):
  workdir = str(workdir)
  if '://' in workdir:  # gs://bucket/run: every process of a pod writes its shards there
    return workdir.rstrip('/') + '/checkpoints'
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir, *, keep=3, read_only=False):
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                           save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
  handlers = {'train_state': ocp.StandardCheckpointHandler(),
              'ema_params': ocp.StandardCheckpointHandler(),
              'config': ocp.JsonCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(mngr, state, config):
  """Starts an asynchronous save of `state` at its step (returns before the write ends)."""
  step = int(jax.device_get(state.step))
  train_state = {'step': state.step, 'params': state.params, 'opt_state': state.opt_state}
  position = {'seed': config.seed, 'step': step, 'global_batch_size': config.train.batch_size}
  mngr.save(step, args=ocp.args.Composite(
      train_state=ocp.args.StandardSave(train_state),
      ema_params=ocp.args.StandardSave(state.ema_params),
      config=ocp.args.JsonSave(config.to_dict()),
      data=ocp.args.JsonSave(position)))


def _damaged(mngr, step, error):
  while getattr(error, '__cause__', None) is not None:  # the root cause names the file
    error = error.__cause__
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)  # no repr
  lines = [line for line in str(text).splitlines() if line.strip()]
  reason = (lines[0] if lines else type(error).__name__)[:300]
  return CheckpointError(
      f'checkpoint {step} in {mngr.directory} is incomplete or corrupt ({reason}); '
      f'move {mngr.directory}/{step} aside to resume from the checkpoint before it')


def _silence_orphaned_reads():
  """After one array of a restore fails, orbax's other reads fail in the background and each
  reports again, late, through asyncio's logger and sys.unraisablehook ("Event loop is
  closed"). The error already raised says everything; keep those reports off the console."""
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  default_hook = sys.unraisablehook

  def hook(unraisable):
    if 'Event loop is closed' not in str(unraisable.exc_value):
      default_hook(unraisable)
  sys.unraisablehook = hook


def _restore(mngr, step, **items):
  try:
    return mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax and tensorstore report damage as many types, some bare Exception
    _silence_orphaned_reads()
    raise _damaged(mngr, step, e) from e


def _shapes(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _setting_diffs(saved, config):
  """'model.channels=8 there, 16 now' for the model and data settings that differ."""
  plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # JSON turns tuples to lists
  out = []
  for section in ('model', 'data'):
    old, new = saved.get(section, {}), config[section].to_dict()
    for key in sorted(old.keys() | new.keys()):
      if plain(old.get(key)) != plain(new.get(key)):
        out.append(f'{section}.{key}={old.get(key)!r} there, {new.get(key)!r} now')
  return out


def check_compatible(mngr, abstract_params, step, config=None):
  """Raises CheckpointError naming the parameters whose saved shapes differ from the model's
  (and, given the current config, the model and data settings that differ from the saved)."""
  try:
    metadata = mngr.item_metadata(step)['ema_params']
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(mngr, step, e) from e
  if metadata is None:
    raise _damaged(mngr, step, 'no readable metadata for ema_params')
  saved = _shapes(metadata.tree)
  wanted = _shapes(abstract_params)
  diffs = [f'{k} {saved.get(k, "missing")} in the checkpoint vs {wanted.get(k, "missing")} now'
           for k in sorted(saved.keys() | wanted.keys()) if saved.get(k) != wanted.get(k)]
  if diffs:
    settings = _setting_diffs(restore_config(mngr, step).to_dict(), config) if config else []
    settings = f' ({", ".join(settings)})' if settings else ''
    raise CheckpointError(
        f'checkpoint {step} in {mngr.directory} was written by a different model config'
        f'{settings}: {len(diffs)} parameter(s) differ, e.g. {"; ".join(diffs[:3])}. Train in '
        f'a new --workdir, or rerun with the config saved in the checkpoint')


def restore(mngr, abstract_state, step=None, config=None):
  """The full TrainState at `step` (latest by default), laid out as `abstract_state` says.

  config: the current config, only to name the settings that differ if the shapes do.
  """
  step = mngr.latest_step() if step is None else step
  check_compatible(mngr, abstract_state.params, step, config)
  abstract_train = {'step': abstract_state.step, 'params': abstract_state.params,
                    'opt_state': abstract_state.opt_state}
  r = _restore(mngr, step, train_state=ocp.args.StandardRestore(abstract_train),
               ema_params=ocp.args.StandardRestore(abstract_state.ema_params))
  t = r.train_state
  return TrainState(step=t['step'], params=t['params'], ema_params=r.ema_params,
                    opt_state=t['opt_state'])


def restore_config(mngr, step=None):
  """The resolved config saved with a checkpoint."""
  step = mngr.latest_step() if step is None else step
  r = _restore(mngr, step, config=ocp.args.JsonRestore())
  return ml_collections.ConfigDict(r.config)


def restore_ema_params(mngr, abstract_params, step=None):
  """Only the EMA parameters: what sampling needs."""
  step = mngr.latest_step() if step is None else step
  return _restore(mngr, step, ema_params=ocp.args.StandardRestore(abstract_params)).ema_params
