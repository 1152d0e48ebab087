#!/usr/bin/env bash
# Sets up a fresh machine: Debian's Fashion-MNIST package and a virtualenv (.venv) holding
# cfg_jax with the extras named in $1 (e.g. "test,notebook"). Idempotent; sourced by
# launch/quickstart.sh and tests/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# pip 26 rejects an empty extras list (".[]"): no extras, no brackets.
.venv/bin/python -m pip install -q -e ".${1:+[$1]}"
