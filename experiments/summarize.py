"""Summarise a search: the chosen arch, predicted vs measured speedup, task scores, parameter
count, held-out MLM loss before/after further training, and the search-progress plot.

    python experiments/summarize.py --results experiments/search/subbert.results \
        --generations experiments/cands/gen_1.cands experiments/cands/gen_2.cands ... \
        --supernet SUPERNET_DIR --time_pt experiments/latency/time.pt \
        [--base_arch "{...}"] [--inherited EXTRACTED_DIR --further FURTHER_DIR \
         --heldout_data HELDOUT_DATA_DIR] --output_dir experiments/summary

    python experiments/summarize.py --results ... --print_best     # just the best arch line

Writes summary.md (printed too), summary.json and search_progress.png under --output_dir.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from superbert.arch import Arch
from superbert.errors import UserError
from superbert.latency import BERT_BASE
from superbert.report import (best_arch, build_summary, evaluated_archs, format_summary,
                              write_summary)
from superbert.cli import run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--results", required=True, help="subbert.results of the evaluated archs")
    p.add_argument("--generations", nargs="*", default=[],
                   help="the generation .cands files in order (1 = Random, then Evolved)")
    p.add_argument("--print_best", action="store_true",
                   help="only print the best arch (the canonical dict line) and exit")
    p.add_argument("--supernet", help="the SuperPLM directory the archs were evaluated on")
    p.add_argument("--time_pt", help="latency predictor (latency_predictor.py output)")
    p.add_argument("--base_arch", default=None,
                   help="reference arch of the speedups (default: BERT-base 12/768/12/3072)")
    p.add_argument("--inherited", help="the extracted sub-model before further training")
    p.add_argument("--further", help="the further-trained model directory (loaded with transformers)")
    p.add_argument("--final_results",
                   help="subbert.results of the further-trained model fine-tuned on tasks")
    p.add_argument("--heldout_data", help="generate_data.py output of the held-out chapters")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--heldout_sequences", type=int, default=None,
                   help="score only the first N held-out sequences (default: all)")
    p.add_argument("--threads", type=int, default=1, help="timing threads (protocol: 1)")
    p.add_argument("--infer_cnt", type=int, default=10, help="timed forwards per arch and round")
    p.add_argument("--plots", nargs="*", default=[], help="other plots to list (e.g. predictor fit)")
    p.add_argument("--output_dir", help="where summary.md / summary.json / search_progress.png go")
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.print_best:
        print(best_arch(evaluated_archs(args.results, args.generations)).arch)
        return
    missing = [f"--{k}" for k in ("supernet", "time_pt", "output_dir") if not getattr(args, k)]
    if missing:
        raise UserError(f"the summary needs {', '.join(missing)}")
    if bool(args.inherited) != bool(args.further) or (args.heldout_data and not args.further):
        raise UserError("--inherited and --further go together (and --heldout_data needs both)")
    base = Arch.parse(args.base_arch) if args.base_arch else BERT_BASE
    out = Path(args.output_dir)
    summary = build_summary(args.results, args.generations, args.supernet, args.time_pt, base,
                            further_dir=args.further, inherited_dir=args.inherited,
                            heldout_data=args.heldout_data, max_seq_length=args.max_seq_length,
                            heldout_sequences=args.heldout_sequences,
                            final_results=args.final_results,
                            threads=args.threads, infer_cnt=args.infer_cnt,
                            plot=out / "search_progress.png", extra_plots=args.plots)
    md, js = write_summary(summary, out)
    print(format_summary(summary))
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    run_main(main)
