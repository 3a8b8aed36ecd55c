#!/usr/bin/env bash
# Pre-train the SuperPLM (or further-train an extracted sub-model) on one node with 8 GPUs.
#
#   bash experiments/cluster/torchrun_8gpu.sh mlm       # MLM SuperPLM from scratch
#   bash experiments/cluster/torchrun_8gpu.sh kd        # KD SuperPLM, distilled from $TEACHER
#   bash experiments/cluster/torchrun_8gpu.sh further   # further-train $STUDENT (an extracted sub-model)
#
# Every rank trains the same sub-arch at each step (seeded by the step); rank 0 writes the
# checkpoints. Override any value below from the environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODE="${1:-mlm}"

# ---- paper-scale settings ---------------------------------------------------------------------
# Supernet 8 / 768 / 12 heads / 3072 / qkv 768 (setup_superbert_model.sh defaults); Wikipedia +
# BooksCorpus packed at 128. Epochs, batch and lr are the original code's defaults (the paper
# does not publish them): 2 epochs, 16 per GPU (global batch 8 x 16 = 128), lr 1e-4, 10k warm-up.
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
DATA="${DATA:-experiments/data/pretrain_data}"
STUDENT="${STUDENT:-experiments/models/superbert_model}"
TEACHER="${TEACHER:-google/electra-base-discriminator}"
CACHE_DIR="${CACHE_DIR:-experiments/output}"
EPOCHS="${EPOCHS:-2}"
TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-16}"               # per GPU, per optimizer step
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

# One data-loader thread per rank is plenty: the shards are memory-mapped token ids.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
torchrun --standalone --nproc_per_node="$NPROC_PER_NODE" pre_training.py \
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
