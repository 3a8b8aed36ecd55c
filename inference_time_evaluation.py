"""Build the latency dataset: time sub-architectures on CPU and append `arch<TAB>ms` lines.

Protocol (see superbert/latency.py): 1 thread, batch 1, seq 128, a warm-up forward, then
--infer_cnt timed forwards; the median is recorded. The BERT-base reference is timed first on
the same machine and written to the sidecar `<output>.json` with the machine, threads, backend
and torch version. `--passes N` times every arch in N separate sweeps (one line each; the
predictor trains on their mean). Re-running skips timings already in --output.
"""
from __future__ import annotations

import argparse
import logging

from superbert.arch import Arch, add_space_args
from superbert.latency import BERT_BASE, TimingProtocol, collect_latency_dataset
from superbert.cli import run_main, setup_logging

logger = logging.getLogger("inference_time_evaluation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bert_model", default=None,
                   help="supernet directory or name (its config bounds the space and sets vocab, "
                        "positions, activation); default: the 8-layer/768/12-head/3072/qkv-768 "
                        "supernet of the seed README")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the arch sample")
    add_space_args(p, original_defaults=False)
    p.add_argument("--hidden_step", type=int, default=None,
                   help="grid step of the hidden size (default 4 when sampling, the original's "
                        "16 with --full_grid)")
    p.add_argument("--ffn_step", type=int, default=None,
                   help="grid step of the FFN size (default 4 when sampling, 12 with --full_grid)")
    p.add_argument("--qkv_step", type=int, default=None, help="grid step of qkv (KD; default 12)")
    p.add_argument("--mlm", action="store_true",
                   help="MLM scheme: heads vary, qkv = 64 x heads (the original default is KD)")
    p.add_argument("--kd", action="store_true", help="KD scheme: 12 heads, qkv varies")
    p.add_argument("--infer_cnt", type=int, default=10, help="timed forwards per arch")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing")
    p.add_argument("--passes", type=int, default=1,
                   help="sweeps over the archs, one line per arch per sweep (the predictor uses "
                        "their mean): 2 roughly halves the noise a slowly wandering machine adds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: the process's CPU time (1 thread only), robust "
                        "when other processes share the CPU")
    p.add_argument("--statistic", default="median", choices=["median", "min"],
                   help="what each line records: the median of the timed forwards, or the "
                        "minimum (more repeatable on a machine whose speed wanders)")
    p.add_argument("--drift_ref", action="store_true",
                   help="time a fixed reference arch after each arch and scale out slow drifts "
                        "of machine load (for shared machines)")
    p.add_argument("--time_supernet", action="store_true",
                   help="time the sliced supernet (the original's subject) instead of the "
                        "extracted dense sub-model")
    p.add_argument("--num_archs", type=int, default=1000,
                   help="archs sampled uniformly from the whole space (all layer counts)")
    p.add_argument("--full_grid", action="store_true", help="time every arch of the grid instead")
    p.add_argument("--output", default="./latency_dataset/lat.tmp",
                   help="dataset file, appended to; the sidecar is <output>.json")
    p.add_argument("--base_arch", default=None,
                   help="reference arch dict (default BERT-base 12/768/12/768/3072; a tiny one "
                        "makes quick runs quick)")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    default_steps = (16, 12, 12) if args.full_grid else (4, 4, 12)
    overrides = dict(layers=args.layer_num_space, hidden=args.hidden_size_space,
                     qkv=args.qkv_size_space, heads=args.head_num_space,
                     ffn=args.intermediate_size_space,
                     hidden_step=args.hidden_step or default_steps[0],
                     ffn_step=args.ffn_step or default_steps[1])
    if args.qkv_step:
        overrides["qkv_step"] = args.qkv_step
    protocol = TimingProtocol(threads=args.threads, batch_size=args.batch_size,
                              seq_len=args.max_seq_length, warmup=args.warmup,
                              infer_cnt=args.infer_cnt, clock=args.clock, drift_ref=args.drift_ref,
                              statistic=args.statistic,
                              subject="supernet" if args.time_supernet else "extracted")
    base = Arch.parse(args.base_arch) if args.base_arch else BERT_BASE
    path, sidecar, n = collect_latency_dataset(
        args.output, args.bert_model, overrides, protocol, args.num_archs, args.full_grid,
        args.seed, mlm=args.mlm, kd=args.kd, base_arch=base, progress=not args.no_progress,
        passes=args.passes)
    logger.info("%s: %d archs requested; reference %s = %.2f ms (%s, %s scheme)", path, n,
                base.short(), sidecar["base_latency_ms"], sidecar["timing_subject"],
                sidecar["scheme"].upper())


if __name__ == "__main__":
    run_main(main)
