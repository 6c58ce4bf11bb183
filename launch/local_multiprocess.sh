#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine (one CPU device each), the
# same code path as a multi-host pod: jax.distributed.initialize() joins them,
# and each process feeds its share of the global batch.
#
#   launch/local_multiprocess.sh 2 --config configs/shakespeare.py:size=tiny --workdir /tmp/mp
set -euo pipefail
n=${1:?usage: local_multiprocess.sh NUM_PROCESSES TRAIN_FLAGS...}
shift
port=${JAX_PORT:-12355}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:${port}" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu python -m tokjax.train "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
