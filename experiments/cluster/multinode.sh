#!/usr/bin/env bash
# Pre-train the SuperPLM on several nodes with torchrun's rendezvous. Run THIS SAME COMMAND on
# every node (same MASTER_ADDR / MASTER_PORT / RDZV_ID); torchrun assigns the node ranks.
#
#   MASTER_ADDR=node001 NNODES=4 bash experiments/cluster/multinode.sh mlm
#
# MASTER_ADDR must be reachable from all nodes (any one of them works as the rendezvous host).
# On SLURM use slurm.sbatch, which fills these in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODE="${1:-mlm}"

# ---- cluster ----------------------------------------------------------------------------------
NNODES="${NNODES:-2}"                     # or MIN:MAX for an elastic job
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"     # GPUs per node
MASTER_ADDR="${MASTER_ADDR:?set MASTER_ADDR to the rendezvous host}"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="${RDZV_ID:-autotinybert}"        # same on every node of one job, new per job
# ---- paper-scale settings (see torchrun_8gpu.sh for where they come from) ---------------------
DATA="${DATA:-experiments/data/pretrain_data}"   # must be readable at this path on every node
STUDENT="${STUDENT:-experiments/models/superbert_model}"
TEACHER="${TEACHER:-google/electra-base-discriminator}"
CACHE_DIR="${CACHE_DIR:-experiments/output}"     # shared filesystem: rank 0 writes, all resume
EPOCHS="${EPOCHS:-2}"
TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-16}"       # per GPU; global batch = NNODES x NPROC x this
GRAD_ACCUM="${GRAD_ACCUM:-1}"
LEARNING_RATE="${LEARNING_RATE:-1e-4}"
WARMUP_STEPS="${WARMUP_STEPS:-10000}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
SAVE_STEPS="${SAVE_STEPS:-2000}"
SEED="${SEED:-42}"
# -------------------------------------------------------------------------------------------------

case "$MODE" in
  mlm)     mode_args=(--mlm_loss --masked_lm_prob 0.15 --scratch) ;;
  kd)      mode_args=(--teacher_model "$TEACHER" --masked_lm_prob 0 --scratch) ;;
  further) mode_args=(--mlm_loss --masked_lm_prob 0.15 --further_train) ;;
  *) echo "usage: $0 {mlm|kd|further}" >&2; exit 2 ;;
esac

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
torchrun \
    --nnodes="$NNODES" \
    --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_id="$RDZV_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    --max_restarts=3 \
    pre_training.py \
    --pregenerated_data "$DATA" \
    --student_model "$STUDENT" \
    --cache_dir "$CACHE_DIR" \
    --epochs "$EPOCHS" \
    --train_batch_size "$TRAIN_BATCH_SIZE" \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --learning_rate "$LEARNING_RATE" \
    --warmup_steps "$WARMUP_STEPS" \
    --max_seq_length "$MAX_SEQ_LENGTH" \
    --save_steps "$SAVE_STEPS" \
    --seed "$SEED" \
    --do_lower_case \
    --fp16 \
    --resume auto \
    "${mode_args[@]}"
