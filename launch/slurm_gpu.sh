#!/usr/bin/env bash
# SLURM batch script: one process per GPU over all allocated nodes. JAX reads the coordinator,
# process count and id from SLURM's variables (sidjax.train.distributed.maybe_initialize).
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm_gpu.sh \
#     sidjax train --config configs/sports.py --workdir /shared/runs/sports --set train.mesh_data=-1
#SBATCH --job-name=sidjax
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
if [ "$#" -lt 1 ]; then
  echo "usage: sbatch [options] $0 COMMAND..." >&2
  exit 2
fi
# --signal=TERM@120 sends SIGTERM two minutes before the time limit: the run checkpoints and
# exits; --requeue restarts the job, which resumes from the checkpoint in the same workdir.
srun --kill-on-bad-exit=1 "$@"
