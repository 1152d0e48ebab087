"""What every command-line entry point shares: runtime flags, quiet logs, one-line errors, reports."""
import builtins
import json
import logging
import math
import os
import platform
import re
import sys

from absl import app, flags, logging as absl_logging

CPU_DEVICES = flags.DEFINE_integer('cpu_devices', None,
                                   'CPU devices to expose (default: one per core).')
DISTRIBUTED = flags.DEFINE_bool(
    'distributed', None, 'Call jax.distributed.initialize() (default: CFG_JAX_DISTRIBUTED=1, '
    'or auto-detected on SLURM and TPU pods).')
COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for clusters JAX cannot detect '
    '(implies --distributed; also give --num_processes and --process_id).')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')


def setup_runtime(*, cpu_devices=None, single_process=False):
  """runtime.setup() with the flags above; call before anything touches a device.

  cpu_devices: overrides --cpu_devices. single_process: for tools that run on one machine
  only; the multi-host flags are then refused instead of ignored.
  """
  from cfg_jax import runtime  # pylint: disable=g-import-not-at-top
  if single_process:
    given = [f'--{f.name}' for f in (DISTRIBUTED, COORDINATOR, NUM_PROCESSES, PROCESS_ID)
             if f.present]
    if given:
      fail(f'{given[0]}: this tool runs in one process; run it on one host without it')
  n, i = NUM_PROCESSES.value, PROCESS_ID.value
  if (n is not None or i is not None) and not (COORDINATOR.value or DISTRIBUTED.value):
    fail('--num_processes and --process_id need --coordinator_address=HOST:PORT (or --distributed)')
  if n is not None and (n < 1 or (i is not None and not 0 <= i < n)):
    fail(f'--process_id must lie in [0, --num_processes={n}), got {i}')
  try:
    runtime.setup(cpu_devices=cpu_devices or CPU_DEVICES.value,
                  distributed=False if single_process else DISTRIBUTED.value,
                  coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                  process_id=PROCESS_ID.value)
  except (RuntimeError, ValueError) as e:  # the coordinator cannot be reached, bad ids
    fail(f'cannot join the multi-host job: {_one_line(e)}')


def is_main_process():
  """Only process 0 writes files; the others compute their part and keep quiet."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


class _MainProcessInfo(logging.Filter):
  """INFO from process 0 only: a pod's other hosts would repeat every line. Asks JAX at the
  first record, so that it does not touch the devices before runtime.setup()."""

  def filter(self, record):
    import jax  # pylint: disable=g-import-not-at-top
    return record.levelno >= logging.WARNING or jax.process_index() == 0


def quiet_logging():
  """Libraries log warnings only; cfg_jax logs progress at INFO, from process 0 only."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logger = logging.getLogger('cfg_jax')
  logger.setLevel(logging.INFO)
  if not any(isinstance(f, _MainProcessInfo) for f in logger.filters):
    logger.addFilter(_MainProcessInfo())


def fail(message, code=2):
  """Ends the program with one line on stderr: what is wrong and what to do."""
  sys.stderr.write(f'error: {message}\n')
  sys.exit(code)


def require(ok, message):
  """fail(message) unless `ok`: a flag's range check in one line."""
  if not ok:
    fail(message)


def guidance_values(values, flag='--guidance'):
  """Finite, distinct w >= -1 (w = -1 is the unconditional model) from a list flag."""
  try:
    ws = [float(w) for w in values]
  except ValueError:
    fail(f'{flag} must be numbers separated by commas, got {",".join(values)!r}')
  require(ws and all(math.isfinite(w) and w >= -1 for w in ws),
          f'{flag} must be finite numbers >= -1, got {",".join(values)!r}')
  require(len(set(ws)) == len(ws), f'{flag} must list distinct values, got {",".join(values)!r}')
  return ws


def check_writable(path, flag):
  """Proves now, before minutes of work, that the folder `path` can be made and written; creates
  nothing. Returns its nearest existing ancestor (or itself), e.g. to measure free space."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  probe = os.path.join(existing, f'.write_test.{os.getpid()}')
  try:
    if not os.path.isdir(existing):
      raise NotADirectoryError(20, 'Not a directory')
    with open(probe, 'w', encoding='utf-8') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    fail(f'{flag}={path} cannot be written ({e.strerror or e}); choose another {flag} or fix '
         f'its permissions')
  return existing


def _one_line(text):
  """The gist of a multi-line message: the last line of an embedded traceback, else all lines."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if any(line.startswith('Traceback') for line in lines):
    return f'{lines[0]} {lines[-1]}'
  return ' '.join(lines)


def parse_flags(argv):
  """absl's flag parser (for app.run's flags_parser) with config mistakes as one line.

  Covers an unknown --config.<key>, a value of the wrong type, and a config file that is
  missing, does not parse, or raises.
  """
  try:
    args = flags.FLAGS(argv)
    for value in flags.FLAGS.flag_values_dict().values():
      getattr(value, 'keys', None)  # a config file that failed to load raises when first used
    return args
  except flags.Error as e:
    fail(f'{_one_line(e)} (see --helpfull)')
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key that is not there
    key = (re.findall(r"'([^'\\]+)", str(e)) or ['?'])[0]
    overrides = [a.split('=')[0] for a in argv if a.startswith('--config')]
    where = next((a for a in overrides if a.endswith(f'.{key}') or f'.{key}.' in a), key)
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    fail(f'unknown config key in {where}' + (f'; did you mean {hint.group(1)}?' if hint else ''))
  except SyntaxError as e:
    fail(f'the config file {e.filename} does not parse: line {e.lineno}: {e.msg}')
  except OSError as e:  # ml_collections: the config file cannot be loaded
    fail(f'cannot load the config file: {str(e).strip().splitlines()[-1].strip()}')


# glibc's malloc hands XLA:CPU's large per-step buffers back to the kernel and gets them again as
# fresh 4 KiB pages (about 150,000 page faults per default train step); asking for transparent
# huge pages made that step about 30% faster on an AVX2 AMD EPYC (benchmarks/CPU_SPEED.md).
# glibc >= 2.35 reads it when a process starts; transparent huge pages must not be `never`.
MALLOC_TUNABLES = 'glibc.malloc.hugetlb=1'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _huge_pages_possible():
  libc, version = platform.libc_ver()
  try:
    with open(_THP_MODE, encoding='utf-8') as f:
      thp_never = '[never]' in f.read()
  except OSError:
    return False
  return libc == 'glibc' and tuple(map(int, version.split('.')[:2])) >= (2, 35) and not thp_never


def restart_with_malloc_tunables(environ=os.environ, execve=os.execve):
  """Re-executes this script with MALLOC_TUNABLES added to GLIBC_TUNABLES, which glibc reads only
  at start-up. Not when GLIBC_TUNABLES already names glibc.malloc.hugetlb (=0 opts out), where
  huge pages cannot help, or where a restart would lose state (an interactive session, a
  debugger or profiler, a script read from stdin). A failed exec only costs the speed-up."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  script = sys.orig_argv[1:2]
  if ('glibc.malloc.hugetlb' in tunables or not sys.executable or script in ([], ['-'])
      or sys.flags.interactive or hasattr(sys, 'ps1') or getattr(builtins, '__IPYTHON__', False)
      or sys.gettrace() or sys.getprofile() or not _huge_pages_possible()):
    return
  env = dict(environ, GLIBC_TUNABLES=':'.join(filter(None, [tunables, MALLOC_TUNABLES])))
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError as e:
    sys.stderr.write(f'warning: running without {MALLOC_TUNABLES} (restart failed: {e})\n')


def run(main, interrupted):
  """app.run(main) with one-line flag errors; Ctrl-C ends with `interrupted` and exit 130.

  First restarts the process with glibc's malloc asking for huge pages (MALLOC_TUNABLES).
  """
  restart_with_malloc_tunables()
  def guarded(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:   # `finally` blocks have run; skip the interpreter's teardown,
      sys.stdout.flush()        # which can crash (SIGSEGV) after an interrupted XLA compile
      sys.stderr.write(f'error: interrupted (Ctrl-C): {interrupted}\n')
      sys.stderr.flush()
      os._exit(130)
  app.run(guarded, flags_parser=parse_flags)


def host_info():
  """The host CPU and the process settings a timing depends on, printed beside every timing:
  machines of one kind differ (AVX-512 or not), and so do XLA's flags and glibc's malloc."""
  model, flags_ = platform.processor() or platform.machine(), set()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      fields = dict(line.split(':', 1) for line in f.read().split('\n\n')[0].splitlines() if ':' in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model, flags_ = fields.get('model name', model), set(fields.get('flags', '').split())
    if 'cpu family' in fields:  # one model name covers several generations ("AMD EPYC" under KVM)
      model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
  except OSError:  # not Linux: the model from `platform`, AVX-512 unknown
    pass
  return {'cpu': model, 'avx512f': 'avx512f' in flags_ if flags_ else None,
          'cores': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', '')}


def print_result(result, as_json):
  """A benchmark's figures: one JSON object, or one aligned `name: value` line each."""
  if as_json:
    print(json.dumps(result))
    return
  width = max(map(len, result))
  for k, v in result.items():
    print(f'{k:>{width}}: {v}')
