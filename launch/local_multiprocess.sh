#!/usr/bin/env bash
# Start N local CPU processes of the same command, each with D host devices, talking over
# 127.0.0.1 (jax.distributed + gloo CPU collectives). Logs go to LOGDIR/process_<i>.log.
#   launch/local_multiprocess.sh N D COMMAND...
#   e.g. launch/local_multiprocess.sh 2 4 sidjax train --config tiny --workdir runs/mp \
#          --set train.mesh_data=-1
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND..." >&2
  exit 2
fi
num="$1"; devices="$2"; shift 2
port="${SIDJAX_PORT:-$((20000 + RANDOM % 20000))}"
logdir="${LOGDIR:-runs/multiprocess_logs}"
mkdir -p "$logdir"
pids=()
for ((i = 0; i < num; i++)); do
  SIDJAX_COORDINATOR="127.0.0.1:${port}" SIDJAX_NUM_PROCESSES="$num" SIDJAX_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
    "$@" >"${logdir}/process_${i}.log" 2>&1 &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
echo "processes finished with status ${status}; logs in ${logdir}" >&2
exit "$status"
