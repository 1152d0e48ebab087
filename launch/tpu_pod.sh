#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice from your workstation (gcloud installed and logged in).
#
#   export TPU_NAME=cfg-v4-128 ZONE=us-central2-b ACCELERATOR_TYPE=v4-128 BUCKET=gs://my-bucket
#   bash launch/tpu_pod.sh create                  # the slice (add SPOT=1 for a spot slice)
#   bash launch/tpu_pod.sh setup                   # copy this checkout to every worker, install
#   bash launch/tpu_pod.sh train imagenet64 run1   # configs/imagenet64.py -> $BUCKET/runs/run1
#   bash launch/tpu_pod.sh logs                    # follow worker 0's log
#   bash launch/tpu_pod.sh stop                    # SIGTERM: every worker saves, then exits
#   bash launch/tpu_pod.sh delete
#
# `train CONFIG RUN [--config.KEY=VALUE ...]` starts launch/train.py on all workers at once
# (CFG_JAX_DISTRIBUTED=1: jax.distributed.initialize() finds the other workers itself). Each
# worker reads its own slice of every global batch. Checkpoints and TensorBoard logs go to
# $BUCKET/runs/RUN (every worker writes its shards there); data is read from
# $BUCKET/tensorflow_datasets (prepare it once, see docs/SCALING.md); worker 0 logs progress to
# ~/cfg_jax_train.log on its VM. Rerunning `train` with the same RUN resumes from the last
# checkpoint, also after the slice was preempted and recreated.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
ON_ALL=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all)

case "${1:-}" in
  create)
    : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v4-128}"
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
        --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
        ${SPOT:+--spot}
    ;;
  setup)
    git archive --format=tar.gz -o /tmp/cfg_jax.tar.gz HEAD
    gcloud compute tpus tpu-vm scp /tmp/cfg_jax.tar.gz "$TPU_NAME":~/ --zone="$ZONE" --worker=all
    "${ON_ALL[@]}" --command='set -e; rm -rf ~/cfg_jax && mkdir ~/cfg_jax
      tar -xzf ~/cfg_jax.tar.gz -C ~/cfg_jax && cd ~/cfg_jax
      sudo apt-get update -q >/dev/null && sudo apt-get install -y -q python3.11-venv >/dev/null
      python3.11 -m venv .venv && .venv/bin/pip install -q --upgrade pip
      .venv/bin/pip install -q -e ".[tpu]" gcsfs google-cloud-storage
      .venv/bin/python -c "import jax; print(jax.process_index(), jax.local_device_count())"'
    ;;
  train)
    : "${BUCKET:?set BUCKET, e.g. gs://my-bucket}"
    CONFIG=${2:?usage: tpu_pod.sh train CONFIG RUN [flags]}; RUN=${3:?usage: tpu_pod.sh train CONFIG RUN}
    shift 3
    "${ON_ALL[@]}" --command="cd ~/cfg_jax && CFG_JAX_DISTRIBUTED=1 nohup .venv/bin/python \
      launch/train.py --config=configs/$CONFIG.py --workdir=$BUCKET/runs/$RUN \
      --config.data.dir=$BUCKET/tensorflow_datasets $* > ~/cfg_jax_train.log 2>&1 &
      echo \$! > ~/cfg_jax_train.pid"
    echo "started on all workers; follow with: bash launch/tpu_pod.sh logs"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=0 \
        --command='tail -n 50 -f ~/cfg_jax_train.log'
    ;;
  stop)
    "${ON_ALL[@]}" --command='kill -TERM "$(cat ~/cfg_jax_train.pid)"'
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    sed -n '2,18p' "$0"
    exit 2
    ;;
esac
