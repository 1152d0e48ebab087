"""runtime.setup's XLA_FLAGS: the CPU default is added once and never overrides the user's."""
from cfg_jax import runtime

YNN = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot,-dot'


def test_cpu_xla_flags_are_added_once_and_never_replace_the_users():
  assert runtime.with_cpu_xla_flags('') == YNN
  assert runtime.with_cpu_xla_flags(' --xla_dump_to=/tmp/d ') == '--xla_dump_to=/tmp/d ' + YNN
  assert runtime.with_cpu_xla_flags(runtime.with_cpu_xla_flags('')) == YNN
  users = '--xla_cpu_experimental_ynn_fusion_type= --xla_dump_to=/tmp/d'   # YNNPACK off entirely
  assert runtime.with_cpu_xla_flags(users) == users
