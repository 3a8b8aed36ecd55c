#!/usr/bin/env bash
# The evolutionary search, unattended: Candidate -> Random (generation 1) -> for each generation,
# evaluate it (fine-tune every arch from the supernet on MNLI and SQuAD) -> Evolved (next one).
#
#   bash experiments/cluster/evolve_loop.sh                 # MLM supernet, 7x speedup, 5 generations
#   MODEL=KD SUPERNET=... TIME_PT=... bash experiments/cluster/evolve_loop.sh
#   NPROC=8 bash experiments/cluster/evolve_loop.sh          # one node, 8 GPUs (torchrun)
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=node001 NPROC=8 bash experiments/cluster/evolve_loop.sh
#                                                            # the same command on every node
#
# With NPROC x NNODES > 1 every generation is evaluated by torchrun: each rank fine-tunes its
# share of the (arch, task, seed) jobs on its own GPU and appends its blocks to the one
# $OUT_DIR/subbert.results (a shared filesystem across nodes). Node 0 runs the search steps; the
# other nodes wait for each generation's .cands file, and node 0 waits for every node's
# "evaluated" stamp before evolving the next generation.
#
# Re-running resumes: finished steps leave their output (candidate file, *.cands, a stamp per
# evaluated generation) and are skipped; inside a generation the evaluator skips every job that
# already has a block. Every generation's results are appended to one
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
# ---- cluster ----------------------------------------------------------------------------------
NPROC="${NPROC:-1}"                       # GPUs (evaluator processes) per node
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"               # 0 on the node that runs the search
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"   # with NNODES > 1: node 0's address, reachable from all
MASTER_PORT="${MASTER_PORT:-29500}"
POLL_SECONDS="${POLL_SECONDS:-30}"        # how often a node looks for the others' files
# -------------------------------------------------------------------------------------------------

PY="${PYTHON:-python}"
if ((NNODES > 1)); then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
  launch=(torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC"
          --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT")
elif ((NPROC > 1)); then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
  launch=(torchrun --standalone --nproc_per_node="$NPROC")   # picks a free port itself
else
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"   # one process fine-tunes on one GPU
  launch=("$PY")
fi

wait_for() {  # wait_for FILE...: until every FILE exists (written by another node)
  local f
  for f in "$@"; do
    until [[ -e "$f" ]]; do sleep "$POLL_SECONDS"; done
  done
}

CANDIDATES="$CANDS_DIR/${MODEL,,}_${SPEEDUP}x"
# the output rule of every script (superbert/outputs.py) for the folders made here: one error line
"$PY" -m superbert.outputs CANDS_DIR="$CANDS_DIR" OUT_DIR="$OUT_DIR" || exit 2
mkdir -p "$CANDS_DIR" "$OUT_DIR"

if ((NODE_RANK == 0)) && [[ ! -s "$CANDIDATES" ]]; then
  "$PY" searcher.py --method Candidate --model "$MODEL" --ckpt_path "$TIME_PT" \
      --latency_constraint "$SPEEDUP" --candidate_file "$CANDIDATES"
fi

if ((NODE_RANK == 0)) && [[ ! -s "$CANDS_DIR/gen_1.cands" ]]; then
  "$PY" searcher.py --method Random --model "$MODEL" --ckpt_path "$TIME_PT" \
      --latency_constraint "$SPEEDUP" --candidate_file "$CANDIDATES" \
      --gen_size "$GEN_SIZE" --seed "$SEED" --output_file "$CANDS_DIR/gen_1.cands"
fi

for ((gen = 1; gen <= GENERATIONS; gen++)); do
  stamp="$OUT_DIR/.gen_${gen}.evaluated"
  if [[ ! -e "$stamp" ]]; then
    ((NODE_RANK == 0)) || wait_for "$CANDS_DIR/gen_${gen}.cands"
    echo "== generation $gen: evaluating $CANDS_DIR/gen_${gen}.cands (node $NODE_RANK of $NNODES, $NPROC per node)"
    "${launch[@]}" superbert_run_en_classifier.py \
        --data_dir "$MNLI_DIR $SQUAD_DIR" \
        --task_name "mnli squad1" \
        --model "$SUPERNET" \
        --super_model "$MODEL" \
        --output_dir "$OUT_DIR" \
        --cache_dir "$OUT_DIR/task_cache" \
        --do_lower_case \
        --seed "$SEED" \
        --arches_file "$CANDS_DIR/gen_${gen}.cands"
    touch "$OUT_DIR/.gen_${gen}.node_${NODE_RANK}.evaluated"
    if ((NODE_RANK == 0)); then
      for ((node = 1; node < NNODES; node++)); do
        wait_for "$OUT_DIR/.gen_${gen}.node_${node}.evaluated"
      done
      touch "$stamp"
    fi
  fi
  next="$CANDS_DIR/gen_$((gen + 1)).cands"
  if ((NODE_RANK == 0 && gen < GENERATIONS)) && [[ ! -s "$next" ]]; then
    "$PY" searcher.py --method Evolved --model "$MODEL" --ckpt_path "$TIME_PT" \
        --latency_constraint "$SPEEDUP" --candidate_file "$CANDIDATES" \
        --arch_perfs_file "$OUT_DIR/subbert.results" \
        --seed "$((SEED + gen))" --output_file "$next"
  fi
done
if ((NODE_RANK != 0)); then
  echo "node $NODE_RANK: done; node 0 prints the results"
  exit 0
fi
echo "done: $GENERATIONS generations evaluated; results in $OUT_DIR/subbert.results"
echo "best arch so far (extract it with submodel_extractor.py --arch ...):"
"$PY" experiments/summarize.py --results "$OUT_DIR/subbert.results" --print_best
