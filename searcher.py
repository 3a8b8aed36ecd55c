"""Search sub-architectures under a latency constraint (the original's searcher, fixed).

Methods: Candidate (enumerate the grid, keep the archs whose predicted latency is in
[0.85, 1.1] x T_base / speedup), Random and Fast (sample a generation from the candidates; Fast
applies the ratio rule), Evolved (the next generation from subbert.results), Pareto (NSGA-II
over predicted latency and fitness). Files are one arch dict per line, as the original.
"""
from __future__ import annotations

import argparse

from superbert.arch import add_space_args
from superbert.search import search_command
from superbert.cli import run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt_path", default="latency_dataset/ckpts/time.pt", help="time.pt")
    p.add_argument("--candidate_file", default="",
                   help="written by --method Candidate, read by the other methods")
    p.add_argument("--arch_perfs_file", default="", help="subbert.results (Evolved, Pareto)")
    p.add_argument("--output_file", default="cands/archs.txt", help="the next generation")
    p.add_argument("--feature_norm", nargs=4, type=float, default=None,
                   metavar=("D", "L", "F", "Q"),
                   help="only for a bare original time.pt (default 768 12 3072 768)")
    p.add_argument("--lat_norm", type=float, default=None,
                   help="only for a bare original time.pt (default 200)")
    p.add_argument("--feature_dim", type=int, default=None, help="checked against time.pt")
    p.add_argument("--hidden_dim", type=int, default=None, help="checked against time.pt")
    p.add_argument("--hidden_layer_num", type=int, default=None, help="checked against time.pt")
    p.add_argument("--latency_constraint", type=float, default=7, help="speedup vs BERT-base")
    p.add_argument("--lat_min_ratio", type=float, default=0.85)
    p.add_argument("--lat_max_ratio", type=float, default=1.1)
    p.add_argument("--base_latency", type=float, default=None,
                   help="BERT-base latency in ms (default: the one measured and saved in time.pt)")
    p.add_argument("--method", default="Random",
                   choices=["Candidate", "Random", "Fast", "Evolved", "Pareto"],
                   type=lambda s: {m.lower(): m for m in
                                   ["Candidate", "Random", "Fast", "Evolved", "Pareto"]}.get(s.lower(), s))
    p.add_argument("--model", default=None, type=str.upper, choices=["MLM", "KD"],
                   help="attention scheme (default: the one recorded in time.pt; MLM for a bare "
                        "original time.pt); contradicting time.pt is an error")
    p.add_argument("--gen_size", type=int, default=25, help="archs per generation")
    p.add_argument("--seed", type=int, default=0)
    add_space_args(p, original_defaults=True)
    p.add_argument("--hidden_step", type=int, default=None, help="default 16 (--fine_grid: 4)")
    p.add_argument("--ffn_step", type=int, default=None, help="default 32 (--fine_grid: 4)")
    p.add_argument("--qkv_step", type=int, default=None, help="default 12")
    p.add_argument("--fine_grid", action="store_true",
                   help="the paper's grid (hidden and FFN step 4, qkv 12) instead of the "
                        "original searcher's 16/32/12")
    p.add_argument("--enumeration", default="auto", choices=["auto", "exact", "interp"],
                   help="Candidate: predict every arch, or interpolate and predict exactly near "
                        "the window edges (auto: by grid size x predictor cost)")
    p.add_argument("--explore_rate", type=float, default=0.5)
    p.add_argument("--crossover", type=float, nargs="?", const=0.5, default=0.0,
                   help="Evolved: probability of uniform crossover before mutation (an "
                        "extension; the original has none)")
    p.add_argument("--plot", default=None, metavar="PNG", help="fitness vs latency of this step")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="time the N best (or first written) archs and BERT-base on this machine "
                        "and print measured beside predicted speedup")
    p.add_argument("--bert_model", default=None,
                   help="supernet directory: clips the space to it, and its config is used by "
                        "--measure")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    search_command(args)


if __name__ == "__main__":
    run_main(main)
