"""Tokenise a raw corpus and pack it into pre-training instances for pre_training.py.

    python generate_data.py --train_corpus corpus.txt --output_dir data/pretrain_data \
        --bert_model bert-base-uncased --do_lower_case --max_seq_len 128 [--num_workers 2]

The corpus holds one sentence per line and a blank line between documents (plain text or
gzip). Whole sentences are packed into instances of at most --max_seq_len WordPieces, never
across documents. --format bin (default) writes memory-mappable token-id shards and
metadata.json; --format json writes the original's 28 train_doc_tokens_ngrams_{i}.json shards.
"""
from __future__ import annotations

import argparse
import logging

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.data.config import DataConfig
from superbert.data.generate import generate_pretraining_data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, DataConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    cfg = config_from_args(DataConfig, build_parser().parse_args(argv))
    meta = generate_pretraining_data(cfg)
    seconds = meta["seconds"]
    print(f"documents: {meta['documents']:,}, instances: {meta['instances']:,}, "
          f"tokens: {meta['tokens']:,}, {meta['tokens'] / max(seconds, 1e-9):,.0f} tokens/s "
          f"({seconds:.1f} s, {meta['num_shards']} {meta['format']} shard(s) in {cfg.output_dir})")


if __name__ == "__main__":
    run_main(main)
