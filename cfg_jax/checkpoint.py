"""Orbax checkpoints of a run: train state, EMA parameters, resolved config, data position.

Items of each step (a Composite): `train_state` (every field of the TrainState but the EMA,
by name, so that a field added to the state is saved and restored without touching this
module), `ema_params` (a separate item so that inference restores nothing else), `config`
(JSON) and `data` (JSON: seed, step, global batch). Saves are asynchronous; orbax writes to a
temporary folder and renames it on commit, so a half-written step is never listed (and is
deleted by the next writer). Restores always take abstract targets with shardings, so a
checkpoint restores onto any mesh or a single device. Before restoring, parameter shapes are
compared (a checkpoint of another model fails with the names of the parameters that differ),
and so are the seed and global batch size (resuming with others would change the run).
A restore that fails is called corrupt only for errors that mean missing or damaged bytes.
"""
import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from cfg_jax import config_lib


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, unreadable, or does not fit the run restoring it."""


def checkpoint_dir(workdir):
  workdir = str(workdir)
  if '://' in workdir:  # gs://bucket/run: every process of a pod writes its shards there
    return workdir.rstrip('/') + '/checkpoints'
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def open_manager(directory, *, keep=3, read_only=False, item_handlers=None):
  """The orbax manager of every checkpoint folder the project writes or reads (runs and the
  reference classifier): asynchronous saves that keep the last `keep` steps, or reading only."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                           save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, item_handlers=item_handlers, options=options)


def manager(workdir, *, keep=3, read_only=False):
  """The manager of a run's checkpoints (WORKDIR/checkpoints), with its four items."""
  handlers = {'train_state': ocp.StandardCheckpointHandler(),
              'ema_params': ocp.StandardCheckpointHandler(),
              'config': ocp.JsonCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}
  return open_manager(checkpoint_dir(workdir), keep=keep, read_only=read_only,
                      item_handlers=handlers)


def _split(state):
  """(every field of a TrainState but the EMA, by name; the EMA): the two array items."""
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return fields, fields.pop('ema_params')


def _position(config):
  """What fixes the data order and the training randomness of every step (beside the step)."""
  return {'seed': config.seed, 'global_batch_size': config.train.batch_size}


def save(mngr, state, config):
  """Starts an asynchronous save of `state` at its step (returns before the write ends)."""
  step = int(jax.device_get(state.step))
  train_state, ema_params = _split(state)
  mngr.save(step, args=ocp.args.Composite(
      train_state=ocp.args.StandardSave(train_state),
      ema_params=ocp.args.StandardSave(ema_params),
      config=ocp.args.JsonSave(config.to_dict()),
      data=ocp.args.JsonSave({'step': step, **_position(config)})))


# --- Why a restore failed -----------------------------------------------------------------

# tensorstore's status codes for bytes that are missing, cut short or garbled.
_DAMAGE_CODES = ('DATA_LOSS', 'OUT_OF_RANGE', 'NOT_FOUND')


def _root_cause(error):
  while getattr(error, '__cause__', None) is not None:  # the root cause names the file
    error = error.__cause__
  return error


def _first_line(error):
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)  # no repr
  lines = [line for line in str(text).splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


def _corrupt(mngr, step, reason):
  return CheckpointError(
      f'checkpoint {step} in {mngr.directory} is incomplete or corrupt ({reason}); move '
      f'{mngr.directory}/{step} aside to resume from the checkpoint before it')


def _failure(mngr, step, error):
  """The CheckpointError that says why reading `step` failed, or None when the error is not
  one this module recognises (it then propagates as it is, with its traceback)."""
  root = _root_cause(error)
  reason = _first_line(root)
  where = f'checkpoint {step} in {mngr.directory}'
  if isinstance(root, PermissionError) or 'PERMISSION_DENIED' in reason:
    return CheckpointError(f'{where} cannot be read: permission denied ({reason}); give this '
                           f'user read access to {mngr.directory}/{step} (nothing says the '
                           f'checkpoint is damaged)')
  if (isinstance(root, MemoryError) or 'RESOURCE_EXHAUSTED' in reason
      or 'out of memory' in reason.lower()):
    return CheckpointError(f'{where} does not fit in device memory ({reason}); the checkpoint '
                           f'is not damaged: restore it on more devices, or shard the state '
                           f'with --config.mesh.fsdp')
  if (isinstance(root, (FileNotFoundError, json.JSONDecodeError))
      or reason.startswith(_DAMAGE_CODES) or 'was not found in the checkpoint' in reason):
    return _corrupt(mngr, step, reason)
  return None


class _OrphanedReads(logging.Filter):
  """While entered, drops the late reports of the reads that a failed restore left behind.

  When one array of a restore fails, orbax closes its event loop with the other reads still
  in flight; each reports again moments later ("Event loop is closed" through
  sys.unraisablehook, "Task exception was never retrieved" through asyncio's logger), after
  the error that already says everything. Only those reports are dropped, and only inside the
  `with` block; the previous hook and the logger's filters are back when it ends.
  """

  TASK_REPORTS = ('Task exception was never retrieved', 'Task was destroyed but it is pending')

  def __init__(self):
    super().__init__()
    self.last = time.monotonic()
    self._previous_hook = None

  def filter(self, record):
    if record.getMessage().startswith(self.TASK_REPORTS):
      self.last = time.monotonic()
      return False
    return True

  def _hook(self, unraisable):
    if 'Event loop is closed' in str(unraisable.exc_value):
      self.last = time.monotonic()
    else:
      self._previous_hook(unraisable)

  def __enter__(self):
    self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook
    logging.getLogger('asyncio').addFilter(self)
    return self

  def __exit__(self, *exc_info):
    logging.getLogger('asyncio').removeFilter(self)
    sys.unraisablehook = self._previous_hook

  def settle(self, quiet_s=0.2, max_wait_s=5.0):
    """Waits until the orphaned reads have stopped reporting; collects their tasks."""
    deadline = time.monotonic() + max_wait_s
    self.last = time.monotonic()
    while time.monotonic() < min(deadline, self.last + quiet_s):
      time.sleep(quiet_s / 4)
    gc.collect()  # asyncio reports a finished task's unretrieved error when it is collected


@contextlib.contextmanager
def _reading(mngr, step):
  """Turns a failed read of checkpoint `step` into the error that says why (`_failure`)."""
  with _OrphanedReads() as orphans:
    try:
      yield
    except Exception as e:  # orbax and tensorstore report damage as many types, some bare Exception
      orphans.settle()
      failure = _failure(mngr, step, e)
      if failure is None:
        e.add_note(f'(while restoring checkpoint {step} in {mngr.directory}; nothing in this '
                   f'error says the checkpoint is damaged)')
        raise
      raise failure from e


def _restore(mngr, step, **items):
  with _reading(mngr, step):
    return mngr.restore(step, args=ocp.args.Composite(**items))


def _shapes(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def setting_diffs(saved, config, sections=('model', 'data'), ignore=()):
  """'model.channels=8 there, 16 now' for the settings of `sections` that differ between a
  saved config (a dict) and `config`, but for the keys in `ignore`."""
  plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # JSON turns tuples to lists
  out = []
  for section in sections:
    old, new = saved.get(section, {}), config[section].to_dict()
    for key in sorted((old.keys() | new.keys()) - set(ignore)):
      if plain(old.get(key)) != plain(new.get(key)):
        out.append(f'{section}.{key}={old.get(key)!r} there, {new.get(key)!r} now')
  return out


# Settings that change what the parameters compute but not their shapes, so that a resumed run
# must keep them (the shape check cannot see them): (config section, key).
SAME_SHAPE_KEYS = (('model', 'norm_groups'), ('diffusion', 'prediction'))


def check_compatible(mngr, abstract_state, step, config=None):
  """Raises CheckpointError naming the parameters whose saved shapes differ from the model's
  (and, given the current config, the model and data settings that differ from the saved, or
  a SAME_SHAPE_KEYS setting that does), or the state fields that the checkpoint lacks."""
  with _reading(mngr, step):
    metadata = mngr.item_metadata(step)
  for item in ('train_state', 'ema_params'):
    if metadata.get(item) is None:
      raise _corrupt(mngr, step, f'Item "{item}" was not found in the checkpoint')
  fields, abstract_params = _split(abstract_state)
  missing = sorted(fields.keys() - metadata['train_state'].tree.keys())
  if missing:
    raise CheckpointError(
        f'checkpoint {step} in {mngr.directory} has no state field(s) {", ".join(missing)} '
        f'(it was written before they existed); train in a new --workdir')
  saved = _shapes(metadata['ema_params'].tree)
  wanted = _shapes(abstract_params)
  diffs = [f'{k} {saved.get(k, "missing")} in the checkpoint vs {wanted.get(k, "missing")} now'
           for k in sorted(saved.keys() | wanted.keys()) if saved.get(k) != wanted.get(k)]
  if diffs:
    settings = setting_diffs(restore_config(mngr, step).to_dict(), config) if config else []
    settings = f' ({", ".join(settings)})' if settings else ''
    raise CheckpointError(
        f'checkpoint {step} in {mngr.directory} was written by a different model config'
        f'{settings}: {len(diffs)} parameter(s) differ, e.g. {"; ".join(diffs[:3])}. Train in '
        f'a new --workdir, or rerun with the config saved in the checkpoint')
  if config:
    saved_config = restore_config(mngr, step)
    for section, key in SAME_SHAPE_KEYS:
      old, new = saved_config[section][key], config[section][key]
      if old != new:
        raise CheckpointError(
            f'checkpoint {step} in {mngr.directory} was trained with {section}.{key}={old}, '
            f'not {new}: its parameters would compute another function. Rerun with '
            f'--config.{section}.{key}={old}, or train in a new --workdir')


def check_position(mngr, step, config):
  """Raises CheckpointError if resuming `step` with `config` would change the run: another
  seed or global batch size gives other batches and other randomness from here on."""
  saved = _restore(mngr, step, data=ocp.args.JsonRestore()).data
  names = {'seed': 'seed', 'global_batch_size': 'train.batch_size'}
  diffs = [(names[k], saved.get(k), v) for k, v in _position(config).items() if saved.get(k) != v]
  if diffs:
    there = ', '.join(f'{name}={old}' for name, old, _ in diffs)
    now = ', '.join(f'{name}={new}' for name, _, new in diffs)
    flags = ' '.join(f'--config.{name}={old}' for name, old, _ in diffs)
    raise CheckpointError(
        f'checkpoint {step} in {mngr.directory} was trained with {there}, not {now}: resuming '
        f'would change the data order and randomness of the run. Rerun with {flags}, or train '
        f'in a new --workdir')


def restore(mngr, abstract_state, step=None, config=None):
  """The TrainState at `step` (latest by default), laid out as `abstract_state` says, of the
  same type with every field (a subclass with more fields restores them too).

  config: the current config of a resumed run: its seed and batch size must be the saved
  ones; it also names the settings that differ if parameter shapes do.
  """
  step = mngr.latest_step() if step is None else step
  check_compatible(mngr, abstract_state, step, config)
  if config is not None:
    check_position(mngr, step, config)
  fields, ema_params = _split(abstract_state)
  r = _restore(mngr, step, train_state=ocp.args.StandardRestore(fields),
               ema_params=ocp.args.StandardRestore(ema_params))
  return type(abstract_state)(**r.train_state, ema_params=r.ema_params)


def _merge(config, saved):
  """`saved` (JSON: lists for tuples) written over `config`; keys the schema lacks are kept."""
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, list) else v
      with config.ignore_type():
        config[key] = tuples(value)


def config_from_json(saved):
  """The config that a checkpoint's JSON describes, over today's defaults: settings added since
  the checkpoint was written take their defaults (the paper's behaviour)."""
  config = config_lib.base_config()
  _merge(config, saved)
  return config


def restore_config(mngr, step=None):
  """The resolved config saved with a checkpoint (`config_from_json`)."""
  step = mngr.latest_step() if step is None else step
  return config_from_json(_restore(mngr, step, config=ocp.args.JsonRestore()).config)


def restore_ema_params(mngr, abstract_params, step=None):
  """Only the EMA parameters: what sampling needs."""
  step = mngr.latest_step() if step is None else step
  return _restore(mngr, step, ema_params=ocp.args.StandardRestore(abstract_params)).ema_params
