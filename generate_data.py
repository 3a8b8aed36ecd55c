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

from superbert.data import generate_pretraining_data
from superbert.cli import run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_corpus", required=True,
                   help="one sentence per line, blank line between documents (.gz accepted)")
    p.add_argument("--output_dir", required=True,
                   help="directory to write (created if missing; refused if it already holds data)")
    p.add_argument("--bert_model", required=True,
                   help="model directory with vocab.txt, a vocab file, or a name such as "
                        "bert-base-uncased")
    p.add_argument("--do_lower_case", action="store_true", help="lower-case (uncased vocabs)")
    p.add_argument("--max_seq_len", type=int, default=128, help="WordPieces per instance (max)")
    p.add_argument("--reduce_memory", action="store_true",
                   help="stream the packed ids to disk as they are made (flat memory for large "
                        "corpora) instead of holding them until the end")
    p.add_argument("--num_workers", type=int, default=1,
                   help="tokenising processes (the output does not depend on it); with 1, "
                        "the Rust tokenizer's own thread pool still uses every core")
    p.add_argument("--format", choices=("bin", "json"), default="bin",
                   help="bin: token-id shards + metadata.json (fast, memory-mapped); json: the "
                        "original's train_doc_tokens_ngrams_{i}.json shards")
    p.add_argument("--num_shards", type=int, default=None,
                   help="instances go round-robin to this many shards (default: 1 for bin, "
                        "28 for json, as the original)")
    p.add_argument("--encoding_errors", choices=("strict", "replace"), default="strict",
                   help="non-UTF-8 bytes: strict stops with the line number; replace "
                        "substitutes U+FFFD")
    p.add_argument("--no_progress", action="store_true",
                   help="no progress bar (it is shown only on a terminal anyway)")
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    args = build_parser().parse_args(argv)
    meta = generate_pretraining_data(
        args.train_corpus, args.output_dir, args.bert_model, do_lower_case=args.do_lower_case,
        max_seq_len=args.max_seq_len, reduce_memory=args.reduce_memory,
        num_workers=args.num_workers, fmt=args.format, num_shards=args.num_shards,
        encoding_errors=args.encoding_errors, progress=False if args.no_progress else None)
    seconds = meta["seconds"]
    print(f"documents: {meta['documents']:,}, instances: {meta['instances']:,}, "
          f"tokens: {meta['tokens']:,}, {meta['tokens'] / max(seconds, 1e-9):,.0f} tokens/s "
          f"({seconds:.1f} s, {meta['num_shards']} {meta['format']} shard(s) in {args.output_dir})")


if __name__ == "__main__":
    run_main(main)
