#!/usr/bin/env bash
# The test command on a fresh machine: set up, then run the suite on two workers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup_env.sh test,notebook
# glibc's malloc with huge pages, as every launcher restarts itself (cfg_jax/cli.py)
case ":${GLIBC_TUNABLES:-}:" in
  *glibc.malloc.hugetlb*) ;;
  *) export GLIBC_TUNABLES=${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1 ;;
esac
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider tests "$@"
