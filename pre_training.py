"""Pre-train the SuperPLM (MLM or knowledge distillation), or further-train an extracted model.

    python pre_training.py --pregenerated_data DATA --student_model SUPERNET_DIR \
        --cache_dir experiments/output --epochs 3 --train_batch_size 8 --learning_rate 1e-4 \
        --max_seq_length 128 --masked_lm_prob 0.15 --do_lower_case --mlm_loss --scratch
    torchrun --nproc_per_node 8 pre_training.py ...   (multi-node: torchrun's own flags)

Every step trains one sub-arch sampled from the search space (the same on every rank);
`--further_train` trains the given model at its own arch. A --student_model with weights (any
BERT/ELECTRA encoder, an AutoTinyBERT checkpoint) is the supernet's start, with its dims,
unless --scratch; `--reorder` first sorts its units by importance, `--reorder_only OUT_DIR`
only writes the reordered copy:

    python pre_training.py --pregenerated_data DATA --student_model BERT_DIR \
        --teacher_model BERT_DIR --reorder ...        (self-distillation from the start)

Checkpoints go to <cache_dir>/output/superbert/checkpoints/<run name>/epoch_<e>/ (and
step_<n>/ with --save_steps, and of the last step with --max_steps); `--resume auto`
continues exactly where the newest complete one stopped.
"""
from __future__ import annotations

import argparse
import logging

from superbert.arch import SPACE_FLAGS, add_space_args
from superbert.cli import add_flags, config_from_args, group_of, run_main, setup_logging
from superbert.distributed import cleanup, init_distributed
from superbert.errors import UserError
from superbert.pretraining.config import RUN, SPACE, PretrainConfig
from superbert.pretraining.run import run_pretraining

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
    add_flags(p, PretrainConfig)
    add_space_args(group_of(p, SPACE), original_defaults=False)
    group_of(p, RUN).add_argument("--local_rank", "--local-rank", type=int, default=-1,
                                help="set by torch.distributed.launch (torchrun sets LOCAL_RANK)")
    g = p.add_argument_group("removed flags of the original (an error if given)")
    for name, why in REMOVED.items():
        g.add_argument(f"--{name}", nargs="?", const="", default=None, help=why)
    return p


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """The run's config from the parsed flags; a removed flag or a bad value is a UserError."""
    for name, why in REMOVED.items():
        value = getattr(args, name)
        if value is not None and not (name == "continue_index" and value in ("0",)):
            raise UserError(why)
    spaces = {f"{n}_space": getattr(args, f"{n}_space") for n in SPACE_FLAGS}
    return config_from_args(PretrainConfig, args, **spaces)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Built (and so validated) before joining the process group: bad flags fail fast on every rank.
    cfg = pretrain_config(args)
    env = init_distributed(args.local_rank, no_cuda=cfg.no_cuda)
    setup_logging(logging.INFO if env.is_main else logging.WARNING)
    try:
        run_pretraining(cfg, env)
    finally:
        cleanup(env)


if __name__ == "__main__":
    run_main(main)
