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

Deviation from the paper, for cheap search: --max_train_examples, --max_eval_examples,
--max_steps and --eval_step make a proxy score (the paper fine-tunes fully; the original had
no such flags). Other differences: --weight_decay is used (default 0.01, the value the original
hard-coded), --eval_batch_size is used for every evaluation, and the final step is evaluated.
"""
from __future__ import annotations

import argparse
import logging

from superbert.errors import UserError
from superbert.finetune import RunConfig, resolve_task_config, run
from superbert.tasks import canonical_task
from superbert.cli import run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 5)[5],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True,
                   help="space-separated task data directories, one per --task_name")
    p.add_argument("--model", required=True, help="the supernet (or sub-model) directory")
    p.add_argument("--task_name", required=True, help="space-separated task names")
    p.add_argument("--output_dir", required=True, help="created if missing; results appended")
    p.add_argument("--cache_dir", default="",
                   help="keep tokenized task features here and reuse them in later runs on "
                        "the same files and settings (e.g. every search generation)")
    p.add_argument("--arches_file", default="",
                   help="candidate archs, one per line; default: the model's full arch")
    p.add_argument("--super_model", default=None, type=str.upper, choices=("MLM", "KD"),
                   help="the supernet's attention scheme; default: the one saved in its "
                        "config.json (a contradiction is an error)")
    p.add_argument("--seed", default="42", help="space-separated seeds; everything runs per seed")
    p.add_argument("--do_lower_case", action="store_true")
    # Per-task defaults apply to these unless given (None = not given).
    p.add_argument("--max_seq_length", type=int, default=None, help="default: per task (128)")
    p.add_argument("--train_batch_size", type=int, default=None, help="default: per task (32)")
    p.add_argument("--learning_rate", type=float, default=None, help="default: per task (5e-5)")
    p.add_argument("--num_train_epochs", type=float, default=None, help="default: per task (3)")
    p.add_argument("--eval_step", type=int, default=None,
                   help="evaluate every N optimizer steps; default: per task")
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--weight_decay", "--wd", type=float, default=0.01,
                   help="BertAdam weight decay (not on biases / LayerNorm); default 0.01")
    p.add_argument("--warmup_proportion", type=float, default=0.1)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--no_cuda", action="store_true")
    p.add_argument("--fp16", action="store_true",
                   help="float16 autocast with loss scaling on a GPU (float32 on CPU, warned)")
    # SQuAD
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_length", type=int, default=64)
    p.add_argument("--n_best_size", type=int, default=20)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--version_2_with_negative", type=int, default=None, choices=(0, 1),
                   help="1: the squad task is SQuAD 2.0 (same as task squad2)")
    p.add_argument("--null_score_diff_threshold", type=float, default=0.0)
    p.add_argument("--verbose_logging", action="store_true", help="debug-level logging")
    # Proxy evaluation (deviation from the paper: cheap, noisier scores for search).
    p.add_argument("--max_train_examples", type=int, default=None,
                   help="proxy: use only the first N training examples (questions for SQuAD)")
    p.add_argument("--max_eval_examples", type=int, default=None,
                   help="proxy: score only the first N dev examples")
    p.add_argument("--max_steps", type=int, default=None,
                   help="proxy: stop after N optimizer steps (replaces the epoch count)")
    p.add_argument("--save_best_model", action="store_true",
                   help="save the best fine-tuned sub-model per task and seed to "
                        "<output_dir>/<task>_seed<seed>[_<arch>]")
    return p


def _split(value: str, flag: str) -> list[str]:
    items = value.split()
    if not items:
        raise UserError(f"{flag} is empty")
    return items


def config_from_args(args: argparse.Namespace) -> RunConfig:
    dirs = _split(args.data_dir, "--data_dir")
    names = _split(args.task_name, "--task_name")
    if len(dirs) != len(names):
        raise UserError(f"--data_dir lists {len(dirs)} directories but --task_name lists "
                        f"{len(names)} tasks; give one directory per task")
    tasks = [canonical_task(n) for n in names]
    if args.version_2_with_negative is not None:
        for i, name in enumerate(names):
            if tasks[i].startswith("squad"):
                if name.lower() in ("squad1", "squad2"):
                    wanted = "squad2" if args.version_2_with_negative else "squad1"
                    if tasks[i] != wanted:
                        raise UserError(f"--version_2_with_negative {args.version_2_with_negative} "
                                        f"contradicts task {name}")
                else:
                    tasks[i] = "squad2" if args.version_2_with_negative else "squad1"
        if not any(t.startswith("squad") for t in tasks):
            raise UserError("--version_2_with_negative needs a squad task")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"--task_name lists a task twice: {' '.join(names)}")
    try:
        seeds = tuple(int(s) for s in _split(args.seed, "--seed"))
    except ValueError:
        raise UserError(f"--seed must be space-separated integers, got {args.seed!r}") from None
    explicit = {k: getattr(args, k) for k in ("num_train_epochs", "max_seq_length",
                                               "learning_rate", "eval_step", "train_batch_size")}
    common = {k: getattr(args, k) for k in (
        "eval_batch_size", "weight_decay", "warmup_proportion", "gradient_accumulation_steps",
        "max_steps", "max_train_examples", "max_eval_examples", "doc_stride",
        "max_query_length", "n_best_size", "max_answer_length", "null_score_diff_threshold")}
    task_cfgs = tuple(resolve_task_config(t, d, explicit, common) for t, d in zip(tasks, dirs))
    return RunConfig(model=args.model, output_dir=args.output_dir, tasks=task_cfgs, seeds=seeds,
                     arches_file=args.arches_file or None,
                     super_model=args.super_model.lower() if args.super_model else None,
                     do_lower_case=args.do_lower_case, no_cuda=args.no_cuda, fp16=args.fp16,
                     save_best_model=args.save_best_model, cache_dir=args.cache_dir or None)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose_logging else logging.INFO)
    run(config_from_args(args))


if __name__ == "__main__":
    run_main(main)
