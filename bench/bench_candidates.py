"""Benchmark: Candidate enumeration on the original coarse grid and the paper's fine grid.

Times `enumerate_candidates` (plus writing the candidate file) with a real time.pt, and
measures the baseline in the same run: exact brute-force prediction of a random sample of the
grid, extrapolated to the whole grid (the original's method: one MLP call per arch). The
interpolated enumeration is checked against exact predictions on that sample (how many archs it
classifies differently).

    python bench/bench_candidates.py --ckpt_path experiments/bench/latency/time.pt

Measured here (2-core AMD EPYC, 7x window). The original 4-2000x4-1 MLP (trained by
bench_latency_predictor.py): coarse grid 1.53 M archs in 7.3-8.4 s + 0.4 s writing (50 k MLP
calls; exact prediction of every arch 217-241 s: target 5 s MISSED, the 50 k exact calls at 24
MFLOP each are this method's floor); fine grid 47.5 M archs in 70-77 s + 13-14 s writing 5.8 M
lines (1.2 GB) = 83-90 s (432-464 k MLP calls; exact 6,827-7,573 s). 0 of 100,000 sampled archs
classified differently from exact prediction on either grid. The cost model (--predictor cost)
is predicted exactly: coarse 0.1 s + 0.4 s writing, fine 3.9 s + 13.8 s writing.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from superbert.arch import Scheme, SearchSpace
from superbert.latency import LatencyPredictor
from superbert.search import (FINE_STEPS, ORIGINAL_STEPS, LatencyWindow, enumerate_candidates,
                              write_candidates)
from superbert.search.candidates import _dims, _features
from superbert.cli import run_main, setup_logging


def keys(L, d, f, q):
    return ((L.astype(np.int64) * 10000 + d) * 10000 + f) * 10000 + q


def bench_grid(pred: LatencyPredictor, space: SearchSpace, window: LatencyWindow, sample: int,
               out: Path, method: str) -> dict:
    t0 = time.perf_counter()
    c = enumerate_candidates(pred, space, window, method, progress=False)
    t_enum = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_candidates(out, c)
    t_write = time.perf_counter() - t0
    size_mb = out.stat().st_size / 2**20
    # baseline: exact prediction of a random sample, extrapolated to the grid
    L, d, f, q, h = _dims(space)
    shape = (len(L), len(d), len(f), len(q))
    rng = np.random.default_rng(0)
    flat = rng.choice(int(np.prod(shape)), size=min(sample, int(np.prod(shape))), replace=False)
    i = np.unravel_index(flat, shape)
    t0 = time.perf_counter()
    ms = pred.predict_features(_features(L[i[0]], d[i[1]], f[i[2]], q[i[3]]))
    t_sample = time.perf_counter() - t0
    brute = t_sample * space.size() / len(flat)
    truth = window.contains(ms)
    got = np.isin(keys(L[i[0]], d[i[1]], f[i[2]], q[i[3]]), keys(c.layers, c.hidden, c.ffn, c.qkv))
    wrong = int(np.sum(truth != got))
    return dict(grid=space.size(), feasible=len(c), method=c.stats["method"],
                calls=c.stats["predicted"], enum_s=t_enum, write_s=t_write, file_mb=size_mb,
                brute_s=brute, sample=len(flat), sample_feasible=int(truth.sum()), disagree=wrong)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", default="experiments/bench/latency/time.pt")
    p.add_argument("--latency_constraint", type=float, default=7)
    p.add_argument("--model", default=None, choices=["MLM", "KD"])
    p.add_argument("--sample", type=int, default=100_000, help="archs predicted exactly per grid")
    p.add_argument("--out_dir", default="experiments/bench/candidates")
    p.add_argument("--method", default="auto", choices=["auto", "exact", "interp"])
    p.add_argument("--skip_fine", action="store_true")
    args = p.parse_args(argv)
    setup_logging()
    pred = LatencyPredictor.load(args.ckpt_path, scheme=args.model)
    scheme = pred.scheme or Scheme.KD
    window = LatencyWindow(pred.base_latency_ms, args.latency_constraint)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"predictor: {pred.describe()}, {scheme.name} scheme; {window.describe()}")
    grids = [("coarse (16/32/12)", ORIGINAL_STEPS, 5.0)]
    if not args.skip_fine:
        grids.append(("fine (4/4/12)", FINE_STEPS, 120.0))
    for name, steps, target in grids:
        space = SearchSpace(scheme=scheme, **steps)
        r = bench_grid(pred, space, window, args.sample, out_dir / f"cands_{name.split()[0]}",
                       args.method)
        total = r["enum_s"] + r["write_s"]
        print(f"{name}: {r['grid']:,} archs, {r['feasible']:,} feasible ({r['method']}, "
              f"{r['calls']:,} predictor calls); enumerate {r['enum_s']:.1f} s + write {r['write_s']:.1f} s "
              f"({r['file_mb']:.0f} MB) = {total:.1f} s [target < {target:g} s: "
              f"{'met' if total < target else 'MISSED'}]")
        print(f"   baseline, exact prediction of every arch (extrapolated from {r['sample']:,}): "
              f"{r['brute_s']:.1f} s -> {r['brute_s'] / max(r['enum_s'], 1e-9):.1f}x faster; "
              f"classification differs from exact on {r['disagree']} of {r['sample']:,} sampled "
              f"archs ({r['sample_feasible']:,} of them feasible)")


if __name__ == "__main__":
    run_main(main)
