"""One writer per workdir: a lock file, held with flock(2), that names the process holding it.

The kernel drops an flock when its holder dies however it dies (SIGKILL, OOM kill, power loss),
so a killed run never blocks the next one; the file's text (host, pid, start time, command)
is only there to name the holder in the refusal. A multi-host run is one writer: process 0
holds the lock and tells the others whether it got it. Shared file systems honour the lock
where their mount supports POSIX locks (NFSv4, Lustre with `flock`); object stores (gs://)
have no locks, so no lock is taken there.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np

LOCK_FILE = '.lock'

log = logging.getLogger('cfg_jax')


class WorkdirBusyError(ValueError):
  """Another live process writes to this workdir."""


def _holder(path):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):   # gone, or being rewritten by its new holder this instant
    return {}


def _busy(workdir, path):
  h = _holder(path)
  if not h:   # its holder is rewriting it this instant
    return WorkdirBusyError(f'{workdir} is in use by another run (see {path}); wait for it to '
                            f'end or choose another folder')
  where = '' if h['host'] == socket.gethostname() else f' on {h["host"]}'
  return WorkdirBusyError(
      f'{workdir} is in use by another run (pid {h["pid"]} on host {h["host"]}, started '
      f'{h["started"]}: {h["command"]}); wait for it to end, stop it with `kill -INT '
      f'{h["pid"]}`{where} (it saves first), or choose another folder')


def _acquire(workdir):
  """The open, locked lock file's descriptor; None where the file system has no locks."""
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise _busy(workdir, path) from None
      log.warning('cannot lock %s (%s): nothing stops a second run in this folder', path, e)
      return None
    try:   # the previous holder unlinks the file on release; then lock the new one instead
      if os.fstat(fd).st_ino == os.stat(path).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  info = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': started,
          'command': ' '.join(sys.argv)}
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(info).encode())
  return fd


@contextlib.contextmanager
def held(workdir):
  """Holds `workdir`'s lock (on process 0) for the block; raises WorkdirBusyError if another
  live process holds it. Every process of a multi-host job must enter together."""
  fd, error = None, None
  if jax.process_index() == 0 and '://' not in str(workdir):
    try:
      fd = _acquire(str(workdir))
    except WorkdirBusyError as e:
      error = e
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if refused and error is None:
      error = WorkdirBusyError(f'{workdir} is in use by another run (process 0 says which)')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if fd is not None:
      os.unlink(os.path.join(workdir, LOCK_FILE))   # before unlocking: see _acquire
      os.close(fd)
