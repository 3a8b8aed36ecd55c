"""Summarise a search: the chosen arch, predicted vs measured speedup, task scores beside each
task's chance level, parameter count, held-out MLM loss before/after further training, the
search-progress plot, and the chosen arch beside the default-ratio arch of the same latency.

    python experiments/summarize.py --results experiments/search/subbert.results \
        --generations experiments/cands/gen_1.cands experiments/cands/gen_2.cands ... \
        --supernet SUPERNET_DIR --time_pt experiments/latency/time.pt \
        [--base_arch "{...}"] [--inherited EXTRACTED_DIR --further FURTHER_DIR \
         --heldout_data HELDOUT_DATA_DIR] \
        [--final_results FINAL_EVAL/subbert.results] \
        [--task_data mnli=BOOKS/MNLI squad1=BOOKS/SQuAD sst-2=BOOKS/SST-2] \
        [--default_arch_file DEFAULT.arch --default_final_results FINAL_DEFAULT/subbert.results \
         --default_further DEFAULT_FURTHER_DIR] [--deployed_results DEPLOYED/subbert.results] \
        --output_dir experiments/summary

    python experiments/summarize.py --results ... --print_best     # just the best arch line
    python experiments/summarize.py --results ... --print_default_arch --time_pt TIME_PT \
        --supernet SUPERNET_DIR [space flags as searcher.py]  # its default-ratio twin's line

With --task_data, each task's chance level and majority-class rate come from its dev file, and
every score within 2 points of chance is flagged AT CHANCE. The final evaluation's saved best
models (--save_best_model: <dir of --final_results>/<task>_seed<seed>) are run over the dev set
again and a classifier that gives one class to >= 95% of it is flagged COLLAPSED.

Writes summary.md (printed too), summary.json, search_progress.png and latency_vs_score.png
(every evaluated arch's fitness against its latency) under --output_dir.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from superbert.arch import (ORIGINAL_STEPS, SPACE_FLAGS, Arch, Scheme, SearchSpace,
                            add_space_args, read_arch_file)
from superbert.cli import add_flags, config_from_args, flag, run_main, setup_logging
from superbert.errors import UserError
from superbert.outputs import Output
from superbert.results import best_arch, evaluated_archs

# torch, transformers and the report are imported where they are used: --print_best, a
# pipeline stage of its own, then starts in a fraction of a second instead of ~6.

SPACE_KEYS = tuple(f"{name}_space" for name in SPACE_FLAGS)
# What the summary writes into --output_dir (and atomic writes' leftovers of a killed run).
SUMMARY_FILES = ("summary.md", "summary.json", "search_progress.png", "latency_vs_score.png",
                 ".*.tmp")


@dataclass(frozen=True, kw_only=True)
class SummaryOutput:
    """Where the summary goes: declared like every stage's outputs, so the one output rule
    (superbert.outputs) checks it before anything is timed or loaded."""

    output_dir: str | None = flag(None, help="where summary.md / summary.json / the plots go",
                                  output=Output.dir(owns=SUMMARY_FILES,
                                                    overwrite="overwrite_output_dir",
                                                    inputs=("results", "time_pt", "supernet")))
    overwrite_output_dir: bool = flag(False, help="write into --output_dir even when it holds "
                                                  "files the summary did not write")
    results: str | None = None
    time_pt: str | None = None
    supernet: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--results", required=True, help="subbert.results of the evaluated archs")
    p.add_argument("--generations", nargs="*", default=[],
                   help="the generation .cands files in order (1 = Random, then Evolved)")
    p.add_argument("--print_best", action="store_true",
                   help="only print the best arch (the canonical dict line) and exit")
    p.add_argument("--print_default_arch", action="store_true",
                   help="only print the default-ratio arch (FFN = 4 x hidden, qkv = hidden, on "
                        "the search grid) whose predicted latency is closest to the best arch's, "
                        "and exit; needs --time_pt and --supernet (space and step flags as "
                        "searcher.py's)")
    p.add_argument("--supernet", help="the SuperPLM directory the archs were evaluated on")
    p.add_argument("--time_pt", help="latency predictor (latency_predictor.py output)")
    p.add_argument("--base_arch", default=None,
                   help="reference arch of the speedups (default: BERT-base 12/768/12/3072)")
    p.add_argument("--inherited", help="the extracted sub-model before further training")
    p.add_argument("--further", help="the further-trained model directory (loaded with transformers)")
    p.add_argument("--final_results",
                   help="subbert.results of the further-trained model fine-tuned on tasks; its "
                        "directory's <task>_seed<seed> models (--save_best_model) are checked "
                        "for collapse")
    p.add_argument("--task_data", nargs="*", default=[], metavar="TASK=DIR",
                   help="task data directories (e.g. mnli=books/MNLI squad1=books/SQuAD): chance "
                        "and majority-class rates from the dev files, and the collapse check")
    p.add_argument("--final_max_seq_length", type=int, default=None,
                   help="the --max_seq_length the final evaluations ran with (default: the "
                        "evaluator's per-task default)")
    p.add_argument("--default_arch_file",
                   help="the default-ratio arch (--print_default_arch output): timed beside the "
                        "chosen arch and shown side by side")
    p.add_argument("--default_final_results",
                   help="subbert.results of the default-ratio arch's further-trained model, "
                        "fine-tuned (its <task>_seed<seed> models are checked for collapse)")
    p.add_argument("--deployed_results",
                   help="subbert.results of superbert_run_en_classifier.py --onnx [--int8] on the "
                        "chosen arch's fine-tuned model: its ONNX Runtime scores, shown beside "
                        "its latency under torch, ONNX Runtime FP32 and INT8 (timed here)")
    p.add_argument("--default_further",
                   help="the default-ratio arch's further-trained model (parameters through "
                        "transformers; held-out MLM loss with --heldout_data)")
    p.add_argument("--supernet_stage_results", nargs=2, metavar=("BEFORE", "AFTER"),
                   help="subbert.results of the chosen (and default-ratio) arch scored on the "
                        "supernet's starting point and on the trained supernet: one line each "
                        "on what the supernet stage did")
    p.add_argument("--supernet_stage_note", default="",
                   help="what the supernet stage was, for that line (e.g. its steps)")
    p.add_argument("--heldout_data", help="generate_data.py output of the held-out chapters")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--heldout_sequences", type=int, default=None,
                   help="score only the first N held-out sequences (default: all)")
    p.add_argument("--threads", type=int, default=1, help="timing threads (protocol: 1)")
    p.add_argument("--infer_cnt", type=int, default=10, help="timed forwards per arch and round")
    p.add_argument("--plots", nargs="*", default=[], help="other plots to list (e.g. predictor fit)")
    add_flags(p, SummaryOutput)
    space = p.add_argument_group("--print_default_arch: the search space (as searcher.py)")
    add_space_args(space, original_defaults=False)
    for name, step in ORIGINAL_STEPS.items():
        space.add_argument(f"--{name}", type=int, default=None,
                           help=f"grid step (default {step}, searcher.py's)")
    return p


def parse_task_data(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise UserError(f"--task_data takes TASK=DIR, got {item!r}")
        out[task] = path
    return out


def print_default_arch(args: argparse.Namespace) -> None:
    missing = [f"--{k}" for k in ("time_pt", "supernet") if not getattr(args, k)]
    if missing:
        raise UserError(f"--print_default_arch needs {', '.join(missing)}")
    from superbert.hf import load_config, resolve_model_dir
    from superbert.latency import LatencyPredictor
    from superbert.search.baseline import matching_default_arch

    best = best_arch(evaluated_archs(args.results, args.generations)).arch
    predictor = LatencyPredictor.load(args.time_pt)
    config = load_config(resolve_model_dir(args.supernet))
    scheme = Scheme.resolve(config.attention_scheme, predictor.scheme,
                            what=f"{args.supernet} (the latency predictor's scheme)")
    ranges = {key: getattr(args, name) for key, name in zip(
        ("layers", "hidden", "qkv", "ffn", "heads"), SPACE_KEYS)}
    steps = {k: getattr(args, k) or v for k, v in ORIGINAL_STEPS.items()}
    space = SearchSpace.for_supernet(config, scheme, **ranges, **steps)
    space.validate_against(config)
    print(matching_default_arch(predictor, best, space))


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    args = build_parser().parse_args(argv)
    config_from_args(SummaryOutput, args, results=args.results, time_pt=args.time_pt,
                     supernet=args.supernet)  # checks --output_dir before any work
    if args.print_best:
        print(best_arch(evaluated_archs(args.results, args.generations)).arch)
        return
    if args.print_default_arch:
        print_default_arch(args)
        return
    space_flags = [f"--{k}" for k in (*SPACE_KEYS, *ORIGINAL_STEPS) if getattr(args, k) is not None]
    if space_flags:
        raise UserError(f"{', '.join(space_flags)}: only --print_default_arch reads the space")
    missing = [f"--{k}" for k in ("supernet", "time_pt", "output_dir") if not getattr(args, k)]
    if missing:
        raise UserError(f"the summary needs {', '.join(missing)}")
    if bool(args.inherited) != bool(args.further) or (args.heldout_data and not args.further):
        raise UserError("--inherited and --further go together (and --heldout_data needs both)")
    if (args.default_final_results or args.default_further) and not args.default_arch_file:
        raise UserError("--default_final_results and --default_further need --default_arch_file")
    from superbert.latency import BERT_BASE
    from superbert.report.markdown import format_summary
    from superbert.report.summary import build_summary, write_summary

    default_arch = None
    if args.default_arch_file:
        archs = read_arch_file(args.default_arch_file, "default arch file")
        if len(archs) != 1:
            raise UserError(f"{args.default_arch_file} should hold one arch, found {len(archs)}")
        default_arch = archs[0]
    base = Arch.parse(args.base_arch) if args.base_arch else BERT_BASE
    out = Path(args.output_dir)
    summary = build_summary(args.results, args.generations, args.supernet, args.time_pt, base,
                            further_dir=args.further, inherited_dir=args.inherited,
                            heldout_data=args.heldout_data, max_seq_length=args.max_seq_length,
                            heldout_sequences=args.heldout_sequences,
                            final_results=args.final_results,
                            task_data=parse_task_data(args.task_data),
                            final_max_seq_length=args.final_max_seq_length,
                            default_arch=default_arch,
                            default_final_results=args.default_final_results,
                            default_further=args.default_further,
                            deployed_results=args.deployed_results,
                            stage_results=args.supernet_stage_results,
                            stage_note=args.supernet_stage_note,
                            threads=args.threads, infer_cnt=args.infer_cnt,
                            plot=out / "search_progress.png",
                            latency_plot=out / "latency_vs_score.png", extra_plots=args.plots)
    md, js = write_summary(summary, out)
    print(format_summary(summary))
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    run_main(main)
