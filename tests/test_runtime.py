"""Process settings: runtime's CPU XLA_FLAGS and cli.run's glibc malloc tunables are added once
and never override the user's."""
import os
import subprocess
import sys

import pytest

from cfg_jax import cli, runtime

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


needs_huge_pages = pytest.mark.skipif(not cli._huge_pages_possible(),  # pylint: disable=protected-access
                                      reason='glibc < 2.35 or transparent huge pages off')


def _restart(tunables=None):
  """The GLIBC_TUNABLES and arguments restart_with_malloc_tunables would exec with, or None."""
  environ = {'PATH': '/bin'} if tunables is None else {'PATH': '/bin', 'GLIBC_TUNABLES': tunables}
  calls = []
  cli.restart_with_malloc_tunables(environ, execve=lambda *a: calls.append(a))
  if not calls:
    return None
  exe, argv, env = calls[0]
  assert exe == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
  assert env['PATH'] == '/bin' and environ.get('GLIBC_TUNABLES') == tunables   # a copy, not this one
  return env['GLIBC_TUNABLES']


@needs_huge_pages
def test_malloc_tunables_restart_once_and_never_replace_the_users():
  assert _restart() == 'glibc.malloc.hugetlb=1'
  assert _restart('glibc.malloc.arena_max=2') == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  assert _restart('glibc.malloc.hugetlb=0') is None        # the user's opt-out
  assert _restart(_restart()) is None                       # already restarted: no loop


@needs_huge_pages
def test_a_failed_restart_only_warns(capsys):
  def refuse(*args):
    raise OSError('exec refused')
  cli.restart_with_malloc_tunables({}, execve=refuse)
  assert 'running without glibc.malloc.hugetlb=1 (restart failed: exec refused)' in capsys.readouterr().err


def _entry_point(tmp_path, env, stdin_script=False):
  """A script with cli.run's start: prints 'start' each time it runs, then what main sees."""
  code = ('import os, sys\nfrom cfg_jax import cli\nprint("start", flush=True)\n'
          'cli.run(lambda argv: print(os.environ.get("GLIBC_TUNABLES"), argv[1:]), "stopped")\n')
  script = tmp_path / 'entry.py'
  script.write_text(code)
  cmd = [sys.executable, '-', 'arg'] if stdin_script else [sys.executable, str(script), 'arg']
  return subprocess.run(cmd, env=env, input=code if stdin_script else None, capture_output=True,
                        text=True, check=True).stdout.splitlines()


@needs_huge_pages
def test_an_entry_point_restarts_once_with_huge_pages_and_its_arguments(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  assert _entry_point(tmp_path, env) == ['start', 'start', "glibc.malloc.hugetlb=1 ['arg']"]
  assert _entry_point(tmp_path, env, stdin_script=True) == ['start', "None ['arg']"]   # no rerun
  env['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=0'
  assert _entry_point(tmp_path, env) == ['start', "glibc.malloc.hugetlb=0 ['arg']"]


def test_the_test_command_adds_the_same_tunables():
  with open(os.path.join(os.path.dirname(__file__), 'run.sh'), encoding='utf-8') as f:
    assert f'{{GLIBC_TUNABLES:+$GLIBC_TUNABLES:}}{cli.MALLOC_TUNABLES}' in f.read()
