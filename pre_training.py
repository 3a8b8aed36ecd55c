"""Pre-train the SuperPLM (MLM or knowledge distillation), or further-train an extracted model.

    python pre_training.py --pregenerated_data DATA --student_model SUPERNET_DIR \
        --cache_dir experiments/output --epochs 3 --train_batch_size 8 --learning_rate 1e-4 \
        --max_seq_length 128 --masked_lm_prob 0.15 --do_lower_case --mlm_loss --scratch
    torchrun --nproc_per_node 8 pre_training.py ...   (multi-node: torchrun's own flags)

Every step trains one sub-arch sampled from the search space (the same on every rank);
`--further_train` trains the given model at its own arch. Checkpoints go to
<cache_dir>/output/superbert/checkpoints/<run name>/epoch_<e>/ (and step_<n>/ with
--save_steps); `--resume auto` continues exactly where the newest complete one stopped.
"""
from __future__ import annotations

import argparse
import logging

from superbert.arch import add_space_args
from superbert.errors import UserError
from superbert.cli import run_main, setup_logging

# Flags of the original that have no meaning any more: given, they stop the run with the
# replacement instead of being silently ignored.
REMOVED = {
    "continue_index": "--continue_index (skip epochs without reloading state) is replaced by "
                      "--resume auto, which restores weights, optimizer and data position",
    "already_trained_epoch": "--already_trained_epoch is replaced by --resume",
    "fp16_opt_level": "--fp16_opt_level was an apex setting; --fp16/--bf16 use torch.amp",
    "reduce_memory": "--reduce_memory is not needed: the shards are memory-mapped",
    "s3_output_dir": "--s3_output_dir (ModelArts cloud) is not supported",
    "data_url": "--data_url (ModelArts cloud) is not supported",
    "train_url": "--train_url (ModelArts cloud) is not supported",
    "init_method": "--init_method is not needed: launch with torchrun (env://)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and models")
    g.add_argument("--pregenerated_data", required=True,
                   help="directory written by generate_data.py (token-id shards or the "
                        "original's train_doc_tokens_ngrams_*.json)")
    g.add_argument("--student_model", required=True,
                   help="supernet directory (config.json + vocab.txt) or, with "
                        "--further_train, an extracted model directory with weights")
    g.add_argument("--teacher_model", default=None,
                   help="KD teacher: any Hugging Face BERT or ELECTRA encoder directory or name")
    g.add_argument("--cache_dir", default="experiments/output",
                   help="root of the outputs (output/superbert/checkpoints/<run>/...)")
    g.add_argument("--max_seq_length", type=int, default=512,
                   help="padding length; every stored sequence must fit")
    g.add_argument("--do_lower_case", action="store_true",
                   help="lower-cased vocab (recorded in the saved tokenizer files)")
    g.add_argument("--debug", action="store_true",
                   help="use only the first 20000 sequences of the data")

    g = p.add_argument_group("objective")
    g.add_argument("--mlm_loss", action="store_true",
                   help="masked-LM objective; without it, distillation from --teacher_model")
    g.add_argument("--kd", action="store_true",
                   help="distillation objective (the default; contradicts --mlm_loss)")
    g.add_argument("--super_model", type=str.lower, choices=["mlm", "kd"], default=None,
                   help="slicing scheme, must agree with the objective (default: MLM with "
                        "--mlm_loss, else KD)")
    g.add_argument("--scratch", action="store_true",
                   help="build the supernet from its config with fresh weights (the default "
                        "unless --further_train)")
    g.add_argument("--further_train", action="store_true",
                   help="load --student_model's weights (MLM head and dense_fit included) and "
                        "train it at its own fixed arch")
    g.add_argument("--masked_lm_prob", type=float, default=0.0,
                   help="masking rate (README: 0.15 for MLM, 0 for KD)")
    g.add_argument("--max_predictions_per_seq", type=int, default=77)
    g.add_argument("--original_masking", action="store_true",
                   help="the original's masking quirks (at least one masked token even at "
                        "--masked_lm_prob 0; never the first and last position)")
    g.add_argument("--original_input_order", action="store_true",
                   help="the original's swapped arguments: no attention mask and the input "
                        "mask as segment ids, for student and teacher")

    g = p.add_argument_group("search space (inclusive ranges; default: the seed README's, "
                             "clipped to the supernet)")
    add_space_args(g, original_defaults=False)
    g.add_argument("--hidden_step", type=int, default=4, help="grid step of the hidden size")
    g.add_argument("--ffn_step", type=int, default=4, help="grid step of the FFN size")
    g.add_argument("--qkv_step", type=int, default=None,
                   help="grid step of the KD qkv size (default: the supernet's head count, 12)")
    g.add_argument("--sample_times_per_batch", type=int, default=1,
                   help="sub-archs per step, run on the same batch (gradients add)")
    g.add_argument("--sandwich", action="store_true",
                   help="extension: also train the largest and smallest sub-arch every step, "
                        "smaller ones distilled in place from the largest (MLM)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=2)
    g.add_argument("--train_batch_size", type=int, default=16,
                   help="sequences per rank per optimizer step (split into "
                        "--gradient_accumulation_steps micro-batches)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=1e-4)
    g.add_argument("--optimizer", type=str.lower, choices=["bertadam", "adamw"],
                   default="bertadam",
                   help="bertadam: the original's (no bias correction, per-tensor clip); "
                        "adamw: torch's fused/foreach AdamW")
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--weight_decay", type=float, default=0.01,
                   help="decoupled weight decay (none on biases and LayerNorm)")
    g.add_argument("--max_grad_norm", type=float, default=1.0,
                   help="global gradient clip (and BertAdam's per-tensor clip); <= 0: off")
    g.add_argument("--warmup_steps", type=int, default=None,
                   help="linear warm-up steps (default 10000; switches to "
                        "--warmup_proportion, with a warning, when the run is shorter)")
    g.add_argument("--warmup_proportion", type=float, default=None,
                   help="warm-up as a share of all steps (default 0.1); used alone when given "
                        "without --warmup_steps")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--fp16", action="store_true",
                   help="float16 autocast + GradScaler (on CPU: bfloat16, with a warning)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    g.add_argument("--loss_scale", type=float, default=0.0,
                   help="initial fp16 loss scale (0: GradScaler's default; always dynamic)")

    g = p.add_argument_group("run control")
    g.add_argument("--logging_steps", type=int, default=500)
    g.add_argument("--save_steps", type=int, default=0,
                   help="also checkpoint every N optimizer steps (0: per epoch only)")
    g.add_argument("--max_steps", type=int, default=0,
                   help="stop after N optimizer steps (the schedule still spans --epochs)")
    g.add_argument("--resume", default=None, metavar="DIR|auto",
                   help="continue exactly from a checkpoint directory, or the newest complete "
                        "one of this run (auto)")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="start over even if this run already has checkpoints")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    g.add_argument("--no_cuda", action="store_true", help="run on CPU even if a GPU is there")
    g.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by torch.distributed.launch (torchrun sets LOCAL_RANK)")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")

    g = p.add_argument_group("removed flags of the original (an error if given)")
    for name, why in REMOVED.items():
        g.add_argument(f"--{name}", nargs="?", const="", default=None, help=why)
    return p


def config_from_args(args: argparse.Namespace):
    from superbert.training import PretrainConfig

    for name, why in REMOVED.items():
        value = getattr(args, name)
        if value is not None and not (name == "continue_index" and value in ("0",)):
            raise UserError(why)
    if args.kd and args.mlm_loss:
        raise UserError("--kd and --mlm_loss contradict each other")
    if args.further_train and args.scratch:
        raise UserError("--scratch and --further_train contradict each other")
    pair = lambda v: tuple(v) if v is not None else None  # noqa: E731
    return PretrainConfig(
        pregenerated_data=args.pregenerated_data, student_model=args.student_model,
        cache_dir=args.cache_dir, teacher_model=args.teacher_model, mlm_loss=args.mlm_loss,
        further_train=args.further_train, super_model=args.super_model, epochs=args.epochs,
        train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate, max_seq_length=args.max_seq_length,
        masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=args.max_predictions_per_seq,
        do_lower_case=args.do_lower_case, fp16=args.fp16, bf16=args.bf16,
        loss_scale=args.loss_scale, warmup_steps=args.warmup_steps,
        warmup_proportion=args.warmup_proportion, seed=args.seed, optimizer=args.optimizer,
        adam_epsilon=args.adam_epsilon, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, logging_steps=args.logging_steps,
        save_steps=args.save_steps, max_steps=args.max_steps, resume=args.resume,
        overwrite_output_dir=args.overwrite_output_dir,
        sample_times_per_batch=args.sample_times_per_batch, sandwich=args.sandwich,
        layer_num_space=pair(args.layer_num_space), hidden_size_space=pair(args.hidden_size_space),
        qkv_size_space=pair(args.qkv_size_space),
        intermediate_size_space=pair(args.intermediate_size_space),
        head_num_space=pair(args.head_num_space), hidden_step=args.hidden_step,
        ffn_step=args.ffn_step, qkv_step=args.qkv_step,
        original_input_order=args.original_input_order, original_masking=args.original_masking,
        num_workers=args.num_workers, debug=args.debug, no_cuda=args.no_cuda,
        threads=args.threads, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from superbert.training import check_config, run_pretraining
    from superbert.distributed import cleanup, init_distributed

    check_config(cfg)  # before joining the process group: bad flags fail fast on every rank
    env = init_distributed(args.local_rank, no_cuda=args.no_cuda)
    setup_logging(logging.INFO if env.is_main else logging.WARNING)
    try:
        run_pretraining(cfg, env)
    finally:
        cleanup(env)


if __name__ == "__main__":
    run_main(main)
