"""Derive small labelled tasks from the built-in books, in the real GLUE / SQuAD file formats.

    python make_book_tasks.py --output_dir experiments/data/books [--seed 42] \
        [--train_examples 2000] [--dev_examples 500]

Writes, under --output_dir (deterministic for a --seed; whole chapters are held out for dev):
  SST-2/{train,dev}.tsv                           which of two books a sentence is from (task sst-2)
  MNLI/{train,dev_matched,dev_mismatched}.tsv     does sentence B follow sentence A (task mnli):
      entailment = the next sentence, neutral = same chapter >= 3 sentences away,
      contradiction = another book; dev_mismatched comes from --mismatched_book only
  SQuAD/{train,dev}-v1.1.json                     cloze answer spans in a paragraph (task squad1)
  corpus/train.txt, corpus/heldout.txt           the training / held-out chapters, corpus format
  book_tasks.json                                 the seed, sizes, chapter split and book md5s
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from superbert.tasks.books import BookTasksConfig, default_books_dir, make_book_tasks
from superbert.cli import run_main, setup_logging

_DEFAULTS = BookTasksConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 4)[4],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--books_dir", type=Path, default=default_books_dir(),
                   help="folder of books in corpus format, *.txt.gz or *.txt (default: data/books)")
    p.add_argument("--output_dir", type=Path, default=Path("experiments/data/books"))
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.add_argument("--dev_fraction", type=float, default=_DEFAULTS.dev_fraction,
                   help="fraction of each book's chapters held out for dev (default %(default)s)")
    p.add_argument("--train_examples", type=int, default=_DEFAULTS.train_examples,
                   help="examples in each task's train file (default %(default)s)")
    p.add_argument("--dev_examples", type=int, default=_DEFAULTS.dev_examples,
                   help="examples in each dev file (default %(default)s)")
    p.add_argument("--sst2_books", nargs=2, default=list(_DEFAULTS.sst2_books),
                   metavar=("BOOK0", "BOOK1"), help="the two books of the SST-2-style task "
                   "(labels 0 and 1; default %(default)s)")
    p.add_argument("--mismatched_book", default=_DEFAULTS.mismatched_book,
                   help="book used only for MNLI dev_mismatched (default %(default)s)")
    p.add_argument("--context_sentences", type=int, default=_DEFAULTS.context_sentences,
                   help="sentences per SQuAD context paragraph (default %(default)s)")
    p.add_argument("--max_chapters_per_book", type=int, default=None,
                   help="use only each book's first N chapters (small smoke-test sets)")
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    args = build_parser().parse_args(argv)
    cfg = BookTasksConfig(books_dir=args.books_dir, seed=args.seed, dev_fraction=args.dev_fraction,
                          train_examples=args.train_examples, dev_examples=args.dev_examples,
                          sst2_books=tuple(args.sst2_books), mismatched_book=args.mismatched_book,
                          context_sentences=args.context_sentences,
                          max_chapters_per_book=args.max_chapters_per_book)
    meta = make_book_tasks(cfg, args.output_dir)
    n_dev = sum(len(b["dev_chapters"]) for b in meta["books"].values())
    n_all = n_dev + sum(len(b["train_chapters"]) for b in meta["books"].values())
    print(f"wrote {args.output_dir}: SST-2, MNLI, SQuAD ({args.train_examples} train / "
          f"{args.dev_examples} dev examples each), corpus/train.txt and corpus/heldout.txt "
          f"({n_dev} of {n_all} chapters held out, seed {args.seed})")


if __name__ == "__main__":
    run_main(main)
