#!/usr/bin/env bash
# Pre-train the SuperPLM (or further-train an extracted sub-model) on ONE GPU.
#
#   bash experiments/cluster/single_gpu.sh mlm       # MLM SuperPLM from scratch
#   bash experiments/cluster/single_gpu.sh kd        # KD SuperPLM, distilled from $TEACHER
#   bash experiments/cluster/single_gpu.sh further   # further-train $STUDENT (an extracted sub-model)
#
# Edit the values below, or override any of them from the environment
# (e.g. EPOCHS=1 TRAIN_BATCH_SIZE=32 bash experiments/cluster/single_gpu.sh mlm).
# Before it: bash setup_superbert_model.sh   and   python generate_data.py ... (see README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODE="${1:-mlm}"

# ---- paper-scale settings ---------------------------------------------------------------------
# Supernet: the original's 8 layers / hidden 768 / 12 heads / FFN 3072 / qkv 768, made by
# setup_superbert_model.sh. Corpus: English Wikipedia + BooksCorpus, packed at 128 WordPieces.
# The paper does not publish epochs or batch size; these are the original code's defaults
# (2 epochs, 16 sequences per GPU, lr 1e-4, 10k warm-up steps), at sequence length 128.
DATA="${DATA:-experiments/data/pretrain_data}"          # output of generate_data.py
STUDENT="${STUDENT:-experiments/models/superbert_model}" # supernet dir, or extracted sub-model for 'further'
TEACHER="${TEACHER:-google/electra-base-discriminator}" # KD teacher: the paper used ELECTRA-base
CACHE_DIR="${CACHE_DIR:-experiments/output}"             # checkpoints: $CACHE_DIR/output/superbert/checkpoints/
EPOCHS="${EPOCHS:-2}"
TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-16}"               # sequences per optimizer step on this GPU
GRAD_ACCUM="${GRAD_ACCUM:-1}"                            # micro-batch = TRAIN_BATCH_SIZE / GRAD_ACCUM
LEARNING_RATE="${LEARNING_RATE:-1e-4}"
WARMUP_STEPS="${WARMUP_STEPS:-10000}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
SAVE_STEPS="${SAVE_STEPS:-2000}"                         # step checkpoints, so --resume loses little
SEED="${SEED:-42}"
# -------------------------------------------------------------------------------------------------

case "$MODE" in
  mlm)     mode_args=(--mlm_loss --masked_lm_prob 0.15 --scratch) ;;
  kd)      mode_args=(--teacher_model "$TEACHER" --masked_lm_prob 0 --scratch) ;;
  further) mode_args=(--mlm_loss --masked_lm_prob 0.15 --further_train) ;;
  *) echo "usage: $0 {mlm|kd|further}" >&2; exit 2 ;;
esac

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
"${PYTHON:-python}" pre_training.py \
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
