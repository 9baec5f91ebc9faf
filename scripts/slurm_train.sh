#!/usr/bin/env bash
# Multi-node OpenVision 2 training under SLURM: one torchrun per node, one worker per GPU.
#
#   sbatch --nodes=4 scripts/slurm_train.sh --recipe l14 --out /shared/runs/ov2-l14
#   sbatch --nodes=2 scripts/slurm_train.sh --preset l14-stage1 --out /shared/runs/l14 parallel=fsdp
#
# Everything after the script name goes to `ov2 train`. The run directory must be on a filesystem
# every node sees (checkpoints are sharded: each rank writes its own part).
#
# Preemption and the time limit (docs/DISTRIBUTED.md, "Faults"): 300 s before the end SLURM sends
# SIGTERM to this batch script (--signal=B:TERM@300). The trap below forwards it to the job step;
# torchrun forwards it to its workers, which finish the step, write a checkpoint and exit with 75
# (ov2's "preempted, saved, not finished"). The script then requeues the job (--requeue), and the
# requeued job continues from the checkpoint: `--resume` here, and a recipe always resumes.
# A run that ends with 75 by itself (SIGTERM from scancel --signal, or a node's own shutdown) is
# requeued the same way; any other non-zero status is a failure and is not requeued.
#SBATCH --job-name=ov2-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

PREEMPTED_EXIT=75  # openvision2.train.faults.PREEMPTED_EXIT
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
    "$OV2" train --resume --no-progress "$@" &
STEP=$!

preempted=0
trap 'preempted=1; echo "ov2: preemption signal, asking the run to save" >&2; kill -TERM "$STEP" 2>/dev/null' TERM
wait "$STEP"; status=$?
while kill -0 "$STEP" 2>/dev/null; do  # the trap interrupted `wait`: wait for the save to finish
    wait "$STEP"; status=$?
done

if [ "$status" -eq "$PREEMPTED_EXIT" ] || { [ "$preempted" -eq 1 ] && [ "$status" -ne 0 ]; }; then
    echo "ov2: run saved and stopped (status $status): requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
