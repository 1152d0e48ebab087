"""runtime.setup's XLA_FLAGS: the CPU default is added once and never overrides the user's."""
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
