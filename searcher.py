"""Search sub-architectures under a latency constraint (the original's searcher, fixed).

Methods: Candidate (enumerate the grid, keep the archs whose predicted latency is in
[0.85, 1.1] x T_base / speedup), Random and Fast (sample a generation from the candidates; Fast
applies the ratio rule), Evolved (the next generation from subbert.results), Pareto (NSGA-II
over predicted latency and fitness). Files are one arch dict per line, as the original.

Latencies are those of the backend the predictor was fitted on (torch, onnxruntime or
onnxruntime-int8, recorded in time.pt; an older time.pt means torch): `--measure` times the
archs and the reference with that backend. Every candidate read must lie in the space and
scheme; an output may not be an existing directory or one of the inputs.
"""
from __future__ import annotations

import argparse

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.search import SearchConfig, search_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p, SearchConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_args(SearchConfig, build_parser().parse_args(argv))
    setup_logging()
    search_command(cfg)


if __name__ == "__main__":
    run_main(main)
