#!/usr/bin/env bash
# Launches training on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config configs/shakespeare.py:size=large,mesh=fsdp \
#       --workdir gs://BUCKET/runs/NAME
#
# Every worker runs the same command; jax.distributed.initialize() discovers the
# slice from the TPU metadata. The workdir must be shared storage (a GCS bucket)
# so that orbax writes one checkpoint for the whole slice. Install once with
# TOKJAX_INSTALL=1, which pip-installs this checkout and jax[tpu] on every worker.
set -euo pipefail
tpu=${1:?usage: tpu_vm.sh TPU_NAME ZONE TRAIN_FLAGS...}
zone=${2:?usage: tpu_vm.sh TPU_NAME ZONE TRAIN_FLAGS...}
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
ssh() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
gcloud compute tpus tpu-vm scp --zone "$zone" --worker=all --recurse "$repo" "$tpu":~/tokjax
if [[ "${TOKJAX_INSTALL:-0}" == 1 ]]; then
  ssh "pip install -U 'jax[tpu]' && pip install -e ~/tokjax"
fi
ssh "cd ~/tokjax && TOKJAX_DISTRIBUTED=1 python -m tokjax.train $(printf '%q ' "$@")"
