"""Derive small labelled tasks from the built-in books, in the real GLUE / SQuAD file formats.

    python make_book_tasks.py --output_dir experiments/data/books [--seed 42] \
        [--train_examples 2000] [--dev_examples 500]

Writes, under --output_dir (deterministic for a --seed; whole chapters are held out for dev):
  SST-2/{train,dev}.tsv                           which of two books a sentence is from (task sst-2)
  MNLI/{train,dev_matched,dev_mismatched}.tsv     does sentence A entail clause B (task mnli):
      entailment = B is a clause of A, contradiction = that clause with its auxiliary verb
      negated or un-negated ("was" <-> "was not"), neutral = a clause of another sentence of
      A's chapter; dev_mismatched comes from --mismatched_book only
  SQuAD/{train,dev}-v1.1.json                     cloze answer spans in a paragraph (task squad1)
  corpus/train.txt, corpus/heldout.txt           the training / held-out chapters, corpus format
  book_tasks.json                                 the seed, sizes, chapter split and book md5s
"""
from __future__ import annotations

import argparse
import logging

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.tasks.books import BookTasksConfig, make_book_tasks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 4)[4],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, BookTasksConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    cfg = config_from_args(BookTasksConfig, build_parser().parse_args(argv))
    meta = make_book_tasks(cfg, cfg.output_dir)
    n_dev = sum(len(b["dev_chapters"]) for b in meta["books"].values())
    n_all = n_dev + sum(len(b["train_chapters"]) for b in meta["books"].values())
    print(f"wrote {cfg.output_dir}: SST-2, MNLI, SQuAD ({cfg.train_examples} train / "
          f"{cfg.dev_examples} dev examples each), corpus/train.txt and corpus/heldout.txt "
          f"({n_dev} of {n_all} chapters held out, seed {cfg.seed})")


if __name__ == "__main__":
    run_main(main)
