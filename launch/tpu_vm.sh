#!/usr/bin/env bash
# Run the same command on every worker of a Cloud TPU VM slice. JAX finds the coordinator, the
# process count and id itself (sidjax.train.distributed.maybe_initialize -> jax.distributed).
#   launch/tpu_vm.sh TPU_NAME ZONE COMMAND...
#   e.g. launch/tpu_vm.sh my-v5e-64 us-west4-a \
#          "cd sidjax && sidjax train --config configs/sports.py --workdir gs://bucket/run \
#           --set train.mesh_data=-1 --set train.mesh_model=8"
# The workdir must be shared by all workers (a GCS bucket). Preemption sends SIGTERM: the run
# checkpoints at the next step and exits; rerunning the same command resumes.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE COMMAND..." >&2
  exit 2
fi
name="$1"; zone="$2"; shift 2
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$*"
