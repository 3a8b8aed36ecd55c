"""Evaluate candidate sub-models of a SuperBERT on GLUE / SQuAD (step [4] of the README).

    python superbert_run_en_classifier.py --data_dir "dataset/glue/MNLI dataset/SQuAD" \\
        --model model/SuperBERT_MLM/ --task_name "mnli squad" --output_dir output/ \\
        --do_lower_case --arches_file cands/1st_generation.fast.cands

Every arch of --arches_file (or the model's full arch) is fine-tuned from the inherited
supernet slice on every task and seed, and one block per (seed, arch, task) is appended to
<output_dir>/subbert.results, which `searcher.py --method Evolved --arch_perfs_file` reads.
Also written: <output_dir>/eval_results.txt (every evaluation), <output_dir>-MM/eval_results.txt
(MNLI-mismatched after MNLI), SQuAD predictions.json / nbest_predictions.json (null_odds.json
for v2) of the best evaluation, and with --save_best_model the best fine-tuned sub-model per
task and seed.

Tasks: cola mnli mnli-mm mrpc sst-2 sts-b qqp qnli rte wnli squad1 squad2 (squad = squad1).
Per-task defaults follow the original (e.g. mnli: 4 epochs, seq 128, lr 3e-5, batch 32, eval
every 500 steps; squad1: 4 epochs, seq 384, lr 3e-5, batch 16); a flag given on the command
line overrides them for every task.

Many processes share one run's (arch, task, seed) jobs without talking to each other: under
`torchrun --nproc_per_node N [--nnodes M ...]` each rank takes its share (job k goes to rank
k mod world size) and fine-tunes on GPU LOCAL_RANK; `--shard I/N` (or a SLURM job array's
SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) picks a share without torchrun. Every process
appends its blocks, under a file lock, to the one <output_dir>/subbert.results, each with a
`seed = N` line. Re-running the same command evaluates only the jobs without a block there
("N of M jobs already have results in FILE: skipped"); --overwrite_results re-evaluates all of
them after moving the old file to subbert.results.bak-<time>. Blocks of other archs or tasks
(earlier generations) are kept; a block of an arch this supernet cannot hold is an error.

Deploy check: `--model FINETUNED_DIR --onnx [--int8]` (a --save_best_model directory, one
task) trains nothing: it exports the model with its head to <output_dir>/<name>.onnx, scores
the dev set with ONNX Runtime through the same evaluation code, logs the torch model's score
beside it, and appends one block per runtime marked `runtime = onnxruntime-fp32|-int8`.

Deviation from the paper, for cheap search: --max_train_examples, --max_eval_examples,
--max_steps and --eval_step make a proxy score (the paper fine-tunes fully; the original had
no such flags). Other differences: --weight_decay is used (default 0.01, the value the original
hard-coded), --eval_batch_size is used for every evaluation, and the final step is evaluated.
"""
from __future__ import annotations

import argparse
import logging

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.finetuning.run import run
from superbert.finetuning.config import RunConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 5)[5],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, RunConfig)
    return p


def parse_config(argv: list[str] | None = None) -> RunConfig:
    return config_from_args(RunConfig, build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    setup_logging(logging.DEBUG if cfg.verbose_logging else logging.INFO)
    run(cfg)


if __name__ == "__main__":
    run_main(main)
