"""bench/bench_gpu.py --dry: the GPU check runs end to end on the CPU, so it cannot rot before a GPU
is lent. Checked: the table's rows and columns, and that every case reported a number or an
explained skip (not the numbers themselves)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_gpu.py"
sys.path.insert(0, str(SCRIPT.parent))

import bench_gpu  # bench/ on sys.path, as when a bench runs


def test_peak_table_and_flops():
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.peak_tflops("NVIDIA H200") == 989.0
    assert bench_gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_gpu.peak_tflops("NVIDIA L40") == 181.0
    assert bench_gpu.peak_tflops("Tesla T4") is None
    arch = bench_gpu.Arch(layers=8, hidden=768, heads=12, qkv=768, ffn=3072)
    # no masked token: 3 x the encoder's forward (6 x its matmul weights per token + attention)
    weights = 8 * (4 * 768 * 768 + 2 * 768 * 3072)
    attention = 8 * 2 * 2 * 128 * 768  # per token at 128 tokens
    assert bench_gpu.train_flops(arch, 2, 128, 0, 30522) == 3 * 2 * 128 * (2 * weights + attention)


@pytest.mark.slow
def test_dry_run_reports_every_case(tmp_path):
    out = tmp_path / "out"
    # --peak_tflops: the dry run has no known peak; given one, the MFU column is filled too.
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--out", str(out),
                        "--peak_tflops", "0.01"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    rows = report["rows"]
    assert report["dry"] is True
    sections = [row["section"] for row in rows]
    assert sections == ["pretrain"] * 8 + ["torchrun"] + ["finetune"] * 2 + ["latency"] * 6

    for row in rows:
        what = f"{row['section']} / {row['case']}: {row}"
        assert row["status"] in ("ok", "skipped"), what
        if row["status"] == "ok":
            assert row["value"] is not None and math.isfinite(row["value"]) and row["value"] > 0, what
            assert row["unit"], what
        else:
            assert row["value"] is None and row["note"], what

    # pre-training: {full, sub} x {bf16, fp16} x {eager, compile}; fp16 needs CUDA
    pretrain = [row for row in rows if row["section"] == "pretrain"]
    seen = set()
    for row in pretrain:
        kind, _, rest = row["case"].partition(" ")
        _, precision, how = rest.split(", ", 2)
        seen.add((kind, precision, how.split(" ")[0]))
        if precision == "fp16":
            assert row["status"] == "skipped" and "CUDA" in row["note"], row
        else:
            assert row["status"] == "ok" and row["unit"] == "tok/s", row
            assert row["mfu"] is not None and row["mfu"] > 0, row
    assert seen == set(product(("full", "sub"), ("bf16", "fp16"), ("eager", "compile")))
    assert report["full_arch"] != report["sub_arch"]

    (torchrun,) = [row for row in rows if row["section"] == "torchrun"]
    assert torchrun["status"] == "ok" and torchrun["unit"] == "steps/s", torchrun
    assert torchrun["note"].startswith("passed") and "gloo" in torchrun["case"], torchrun

    fp32, fp16 = [row for row in rows if row["section"] == "finetune"]
    assert fp32["status"] == "ok" and fp32["unit"] == "examples/s", fp32
    assert fp16["status"] == "skipped" and "CUDA" in fp16["note"], fp16

    latency = [row for row in rows if row["section"] == "latency"]
    assert [row["case"].split(":")[0] for row in latency] == ["batch 1"] * 3 + ["batch 32"] * 3
    assert all(row["unit"] == "ms" for row in latency)

    # the markdown table: the header, then one line of every column per row
    lines = (out / "bench_gpu.md").read_text().splitlines()
    header = "| " + " | ".join(bench_gpu.COLUMNS) + " |"
    start = lines.index(header)
    body = lines[start + 2: start + 2 + len(rows)]
    assert all(line.startswith("| ") and line.count(" | ") == len(bench_gpu.COLUMNS) - 1
               for line in body), body
    assert [line.split(" | ")[1] for line in body] == [row["case"] for row in rows]
    assert "17 rows: 12 ok, 5 skipped, 0 failed or timed out" in r.stdout
