"""Runs the launchers in subprocesses as a user would, and fingerprints what they leave behind."""
import hashlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'fashion_mnist.py') + ':tiny'


def command(workdir, *flags, devices=8, config=TINY):
  """The launcher on the tiny config (training grids off, as in conftest.tiny_config)."""
  return [sys.executable, os.path.join(ROOT, 'launch', 'train.py'), f'--config={config}',
          f'--workdir={workdir}', f'--cpu_devices={devices}', '--config.sample.per_class=0',
          *flags]


def run(workdir, *flags, timeout=300, **kw):
  return subprocess.run(command(workdir, *flags, **kw), capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)


def run_tool(name, *flags, timeout=300):
  """Any launcher, e.g. run_tool('sample.py', '--workdir=...')."""
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', name), *flags],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start(workdir, *flags, log_path, **kw):
  """Starts training in the background; stdout and stderr go to `log_path`."""
  with open(log_path, 'w') as log:
    return subprocess.Popen(command(workdir, *flags, **kw), stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)


def wait_until(predicate, proc, timeout=240, what='condition'):
  """Polls `predicate` while `proc` runs; fails if it exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f'process exited ({proc.returncode}) before {what}')
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.1)


def committed_steps(workdir):
  """Step folders that orbax has committed (renamed from their temporary names)."""
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _sha256(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def digest(path):
  """{relative path: sha256} of `path` or every file under it (empty folders included as None)."""
  if os.path.isfile(path):
    return {'.': _sha256(path)}
  out = {}
  for root, dirs, files in os.walk(path):
    rel = os.path.relpath(root, path)
    if not dirs and not files:
      out[rel + '/'] = None
    for name in files:
      out[os.path.join(rel, name)] = _sha256(os.path.join(root, name))
  return out
