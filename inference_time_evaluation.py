"""Build the latency dataset: time sub-architectures on CPU and append `arch<TAB>ms` lines.

Protocol (see superbert/latency/timing.py): 1 thread, batch 1, seq 128, a warm-up forward, then
--infer_cnt timed forwards; the median is recorded. The BERT-base reference is timed first on
the same machine and written to the sidecar `<output>.json` with the machine, threads, backend
and torch version. `--passes N` times every arch in N separate sweeps (one line each; the
predictor trains on their mean). Re-running skips timings already in --output.

`--backend onnxruntime | onnxruntime-int8` times each arch (and the reference) exported to ONNX
and run by ONNX Runtime (FP32, or ONNX Runtime's dynamic INT8) under the same protocol; the
sidecar records the backend, the ONNX Runtime version and providers. A dataset holds one
backend: resuming it with another is refused. Off a terminal (or with --no_progress) a progress
line with count, ms/arch and ETA is logged every 50 archs or ~10 s.
"""
from __future__ import annotations

import argparse
import logging

from superbert.arch import Scheme
from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.latency import LatencyConfig, collect_latency_dataset, sidecar_backend

logger = logging.getLogger("inference_time_evaluation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p, LatencyConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_args(LatencyConfig, build_parser().parse_args(argv))
    setup_logging()
    path, sidecar, n = collect_latency_dataset(cfg)
    logger.info("%s: %d archs requested; reference %s = %.2f ms (%s, %s scheme, %s backend)",
                path, n, cfg.reference.short(), sidecar["base_latency_ms"],
                sidecar["timing_subject"], Scheme.parse(sidecar["scheme"]).name,
                sidecar_backend(sidecar))


if __name__ == "__main__":
    run_main(main)
