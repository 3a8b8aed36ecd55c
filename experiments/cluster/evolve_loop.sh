#!/usr/bin/env bash
# The evolutionary search, unattended: Candidate -> Random (generation 1) -> for each generation,
# evaluate it (fine-tune every arch from the supernet on MNLI and SQuAD) -> Evolved (next one).
#
#   bash experiments/cluster/evolve_loop.sh                 # MLM supernet, 7x speedup, 5 generations
#   MODEL=KD SUPERNET=... TIME_PT=... bash experiments/cluster/evolve_loop.sh
#
# Re-running resumes: finished steps leave their output (candidate file, *.cands, a stamp per
# evaluated generation) and are skipped. Every generation's results are appended to one
# $OUT_DIR/subbert.results, so Evolved picks parents from everything evaluated so far.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# ---- paper-scale settings ---------------------------------------------------------------------
# The original: population 25 per generation, constraint = speedup over BERT-base, fitness =
# mean(MNLI-m acc x 100, SQuAD v1.1 F1), every arch fully fine-tuned with the per-task defaults
# (MNLI 4 epochs, SQuAD 4 epochs). The number of generations is not published; 5 is our choice.
MODEL="${MODEL:-MLM}"                                        # MLM or KD supernet
SUPERNET="${SUPERNET:-experiments/models/superbert_mlm}"      # the trained SuperPLM (config + weights)
TIME_PT="${TIME_PT:-experiments/latency/mlm_model/time.pt}"  # latency_predictor.py output
SPEEDUP="${SPEEDUP:-7}"                                      # latency constraint (x faster than BERT-base)
GENERATIONS="${GENERATIONS:-5}"
GEN_SIZE="${GEN_SIZE:-25}"
MNLI_DIR="${MNLI_DIR:-experiments/data/glue/MNLI}"           # train.tsv, dev_matched.tsv, dev_mismatched.tsv
SQUAD_DIR="${SQUAD_DIR:-experiments/data/SQuAD}"             # train-v1.1.json, dev-v1.1.json
CANDS_DIR="${CANDS_DIR:-experiments/cands}"
OUT_DIR="${OUT_DIR:-experiments/search}"
SEED="${SEED:-42}"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"     # the evaluator fine-tunes on one GPU
# -------------------------------------------------------------------------------------------------

PY="${PYTHON:-python}"
CANDIDATES="$CANDS_DIR/${MODEL,,}_${SPEEDUP}x"
mkdir -p "$CANDS_DIR" "$OUT_DIR"

if [[ ! -s "$CANDIDATES" ]]; then
  "$PY" searcher.py --method Candidate --model "$MODEL" --ckpt_path "$TIME_PT" \
      --latency_constraint "$SPEEDUP" --candidate_file "$CANDIDATES"
fi

if [[ ! -s "$CANDS_DIR/gen_1.cands" ]]; then
  "$PY" searcher.py --method Random --model "$MODEL" --ckpt_path "$TIME_PT" \
      --latency_constraint "$SPEEDUP" --candidate_file "$CANDIDATES" \
      --gen_size "$GEN_SIZE" --seed "$SEED" --output_file "$CANDS_DIR/gen_1.cands"
fi

for ((gen = 1; gen <= GENERATIONS; gen++)); do
  stamp="$OUT_DIR/.gen_${gen}.evaluated"
  if [[ ! -e "$stamp" ]]; then
    echo "== generation $gen: evaluating $CANDS_DIR/gen_${gen}.cands"
    "$PY" superbert_run_en_classifier.py \
        --data_dir "$MNLI_DIR $SQUAD_DIR" \
        --task_name "mnli squad1" \
        --model "$SUPERNET" \
        --super_model "$MODEL" \
        --output_dir "$OUT_DIR" \
        --cache_dir "$OUT_DIR/task_cache" \
        --do_lower_case \
        --seed "$SEED" \
        --arches_file "$CANDS_DIR/gen_${gen}.cands"
    touch "$stamp"
  fi
  next="$CANDS_DIR/gen_$((gen + 1)).cands"
  if ((gen < GENERATIONS)) && [[ ! -s "$next" ]]; then
    "$PY" searcher.py --method Evolved --model "$MODEL" --ckpt_path "$TIME_PT" \
        --latency_constraint "$SPEEDUP" --candidate_file "$CANDIDATES" \
        --arch_perfs_file "$OUT_DIR/subbert.results" \
        --seed "$((SEED + gen))" --output_file "$next"
  fi
done
echo "done: $GENERATIONS generations evaluated; results in $OUT_DIR/subbert.results"
echo "best arch so far (extract it with submodel_extractor.py --arch ...):"
"$PY" experiments/summarize.py --results "$OUT_DIR/subbert.results" --print_best
