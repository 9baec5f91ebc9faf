#!/usr/bin/env bash
# Multi-node OpenVision 2 training under SLURM: one torchrun per node, one worker per GPU.
#
#   sbatch --nodes=4 scripts/slurm_train.sh --recipe l14 --out /shared/runs/ov2-l14
#   sbatch --nodes=2 scripts/slurm_train.sh --preset l14-stage1 --out /shared/runs/l14 parallel=fsdp
#
# Everything after the script name goes to `ov2 train`. The run directory must be on a filesystem
# every node sees (checkpoints are sharded: each rank writes its own part). Requeued or preempted
# jobs continue by themselves: SLURM sends SIGTERM before the time limit (--signal below), the run
# writes a checkpoint and exits, and `--resume` (or a recipe, which always resumes) picks it up.
#SBATCH --job-name=ov2-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
OV2=${OV2:-$(command -v ov2)}

# --max-restarts: torchrun restarts all workers after a failure (a lost GPU, an NCCL timeout);
# restarted workers see TORCHELASTIC_RESTART_COUNT > 0 and resume from the latest checkpoint.
srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    --max-restarts="${MAX_RESTARTS:-3}" \
    "$OV2" train --resume --no-progress "$@"
