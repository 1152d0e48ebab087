#!/usr/bin/env bash
# Train on NVIDIA GPUs: one machine (one process drives all its GPUs), or several machines (one
# process per machine). Install once with CUDA wheels: bash launch/setup_env.sh cuda
#
#   bash launch/gpu.sh configs/cifar10.py workdirs/cifar10 [--config.KEY=VALUE ...]
#
# Several machines under SLURM (one task per node; the cluster is detected automatically):
#   srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 \
#       bash launch/gpu.sh configs/imagenet64.py /shared/runs/imagenet64
# Several machines without SLURM: the same command on each, machine 0's address as coordinator:
#   COORDINATOR=10.0.0.1:12345 NUM_NODES=2 NODE_RANK=0 bash launch/gpu.sh configs/imagenet64.py /shared/runs/in64
#   COORDINATOR=10.0.0.1:12345 NUM_NODES=2 NODE_RANK=1 bash launch/gpu.sh configs/imagenet64.py /shared/runs/in64
# The workdir must be one folder that every machine sees (NFS, Lustre, or gs://...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONFIG=${1:?usage: gpu.sh CONFIG WORKDIR [--config.KEY=VALUE ...]}
WORKDIR=${2:?usage: gpu.sh CONFIG WORKDIR [--config.KEY=VALUE ...]}
shift 2
if ! .venv/bin/python -c 'import jax; assert jax.default_backend() == "gpu"' 2>/dev/null; then
  echo "error: no JAX with CUDA in .venv; run: bash launch/setup_env.sh cuda" >&2
  exit 2
fi
DISTRIBUTED=()
if [ -n "${COORDINATOR:-}" ]; then
  DISTRIBUTED=(--coordinator_address="$COORDINATOR" --num_processes="${NUM_NODES:?set NUM_NODES}"
               --process_id="${NODE_RANK:?set NODE_RANK}")
fi
exec .venv/bin/python launch/train.py --config="$CONFIG" --workdir="$WORKDIR" \
    "${DISTRIBUTED[@]}" "$@"
