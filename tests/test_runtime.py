"""runtime's process settings: the CPU XLA_FLAGS and glibc's malloc tunables are added once and
never override the user's."""
import os
import platform
import subprocess
import sys

import pytest

from cfg_jax import runtime

YNN = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot,-dot'


def _added(xla_flags=None):
  environ = {} if xla_flags is None else {'XLA_FLAGS': xla_flags}
  runtime.add_cpu_xla_flags(environ)
  return environ['XLA_FLAGS']


def test_cpu_xla_flags_are_added_once_and_never_replace_the_users():
  assert _added() == YNN
  assert _added('') == YNN
  assert _added(' --xla_dump_to=/tmp/d ') == '--xla_dump_to=/tmp/d ' + YNN
  assert _added(_added('')) == YNN
  users = '--xla_cpu_experimental_ynn_fusion_type= --xla_dump_to=/tmp/d'   # YNNPACK off entirely
  assert _added(users) == users


def _restart(tunables=None):
  """The environment and arguments restart_with_malloc_tunables would re-execute with, or None."""
  environ = {} if tunables is None else {'GLIBC_TUNABLES': tunables}
  calls = []
  runtime.restart_with_malloc_tunables(environ, execv=lambda *a: calls.append(a))
  return (environ['GLIBC_TUNABLES'], calls[0]) if calls else None


def test_malloc_tunables_restart_once_and_never_replace_the_users():
  if platform.libc_ver()[0] != 'glibc':
    pytest.skip('not glibc: nothing to restart for')
  tunables, (exe, argv) = _restart()
  assert tunables == 'glibc.malloc.hugetlb=1' and exe == sys.executable and argv == sys.orig_argv
  assert _restart('glibc.malloc.arena_max=2')[0] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  assert _restart('glibc.malloc.hugetlb=0') is None        # the user's opt-out
  assert _restart(tunables) is None                         # already restarted: no loop


def test_a_launcher_restarts_itself_with_huge_pages_and_its_arguments(tmp_path):
  """A real exec: the script runs again with the variable set and the same arguments."""
  if platform.libc_ver()[0] != 'glibc':
    pytest.skip('not glibc')
  script = tmp_path / 'entry.py'
  script.write_text('import os, sys\nfrom cfg_jax import runtime\nprint("start", flush=True)\n'
                    'runtime.restart_with_malloc_tunables()\n'
                    'print(os.environ["GLIBC_TUNABLES"], sys.argv[1:])\n')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  out = subprocess.run([sys.executable, str(script), '--x=1'], env=env, capture_output=True,
                       text=True, check=True).stdout.splitlines()
  assert out == ['start', 'start', "glibc.malloc.hugetlb=1 ['--x=1']"]


def test_the_test_command_exports_the_same_tunables():
  with open(os.path.join(os.path.dirname(__file__), 'run.sh'), encoding='utf-8') as f:
    assert f'GLIBC_TUNABLES:-{runtime.MALLOC_TUNABLES}' in f.read()
