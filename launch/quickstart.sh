#!/usr/bin/env bash
# The main job on a fresh machine: set up, train the default Fashion-MNIST config (about 30
# minutes on a 2-core CPU; rerun to resume), then draw a guidance grid with the EMA weights.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup_env.sh
WORKDIR=${WORKDIR:-workdirs/fmnist}
.venv/bin/python launch/train.py --config=configs/fashion_mnist.py --workdir="$WORKDIR" "$@"
.venv/bin/python launch/sample.py --workdir="$WORKDIR" --guidance=0,0.3,1,4 --per_class=8 \
  --out="$WORKDIR/samples/final"
