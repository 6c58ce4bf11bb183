#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine (one CPU device each), the
# same code path as a multi-host pod: jax.distributed.initialize() joins them,
# and each process feeds its share of the global batch.
#
#   launch/local_multiprocess.sh N [train|evaluate|sample] FLAGS...
#
# Each process runs `python -m tokjax.CLI FLAGS...`; CLI is train when the
# second argument names none, so the old form `N TRAIN_FLAGS...` still trains:
#
#   launch/local_multiprocess.sh 2 --config configs/shakespeare.py:size=tiny --workdir /tmp/mp
#   launch/local_multiprocess.sh 2 evaluate --workdir /tmp/mp --split test
#   launch/local_multiprocess.sh 2 sample --workdir /tmp/mp --prompt ROMEO:
#
# The coordinator listens on localhost:$JAX_PORT (default 12355): give launches
# that run at the same time different ports. $PYTHON is the interpreter
# (default python). When one process fails, or the launcher is interrupted or
# terminated, the other processes are killed (SIGKILL: jax.distributed catches
# SIGTERM as a preemption notice and keeps running); the exit status is the
# first failure's.
set -euo pipefail
usage="usage: local_multiprocess.sh NUM_PROCESSES [train|evaluate|sample] FLAGS..."
if [[ ! ${1:-} =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage" >&2
  exit 2
fi
n=$1
shift
cli=train
case "${1:-}" in
  train | evaluate | sample) cli=$1 && shift ;;
esac
port=${JAX_PORT:-12355}
pids=()
trap 'kill -KILL "${pids[@]}" 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:${port}" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu "${PYTHON:-python}" -m "tokjax.$cli" "$@" &
  pids+=($!)
done
status=0
for ((i = 0; i < n; i++)); do
  wait -n || { status=$? && break; }
done
if ((status == 0)); then pids=(); fi  # All exited: nothing to kill.
exit "$status"
