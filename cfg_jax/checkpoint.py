"""Orbax checkpoints of a run: train state, EMA parameters, resolved config, data position.

Items of each step (a Composite): `train_state` (step, params, optimizer state), `ema_params`
(a separate item so that inference restores nothing else), `config` (JSON) and `data` (JSON:
seed, step, global batch). Saves are asynchronous; orbax writes to a temporary folder and
renames it on commit, so a half-written step is never listed. Restores always take abstract
targets with shardings, so a checkpoint restores onto any mesh or a single device.
"""
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from cfg_jax.training import TrainState


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, or does not fit the model being restored."""


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir, *, keep=3, read_only=False):
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                           save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


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


def _restore(mngr, step, **items):
  try:
    return mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise CheckpointError(
        f'checkpoint {step} in {mngr.directory} cannot be restored: '
        f'{str(e).splitlines()[0][:300]}') from e


def restore(mngr, abstract_state, step=None):
  """The full TrainState at `step` (latest by default), laid out as `abstract_state` says."""
  step = mngr.latest_step() if step is None else step
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
