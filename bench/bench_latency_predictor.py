"""Benchmark: latency predictor accuracy on this machine, and measured speedup of searched archs.

`--defaults` is a separate, shorter bench: `latency_predictor.py --lat_dataset_path X
--ckpt_path Y` with its defaults (the cost model, or the FLOPs fit where cross-validation
prefers it) on a 30-arch and a 200-arch dataset, beside the FLOPs baseline it prints and
`--predictor mlp` (the original's MLP and settings, stopped early on its validation split):
script seconds, fit seconds, test MAPE, time.pt size; then the default against the baseline
over 20 split seeds (a 30-arch dataset tests on 3 archs), a FLOPs fit chosen counting as a tie.
The datasets are timed by inference_time_evaluation.py on the default 8-layer supernet (KD, 1
thread, batch 1, sequence 32, clock cpu, min of 5 runs, 2 passes; 2-5 min for both here);
`--synthetic` writes instead a known per-layer cost law (`--law flops`: latency proportional to
FLOPs) with `--noise` (default 3%; nothing timed), `--data_seeds K` pools K such datasets;
`--from_dataset LAT_TMP` takes the first N archs of an existing dataset for each size.

Measured with --defaults on the 2-core AMD EPYC VM while other jobs ran (load average 4-5; the
MLP runs under OMP_NUM_THREADS=1 and nice so as not to take both cores), with the default of
then (the cost model fitted on the training split alone). Two timings of one arch differed by
24% (30 archs) and 18% (200 archs) MAPE under that load, so the mean of two passes is ~10% off:
the test MAPEs below sit at that noise floor.

    archs  predictor                  script s    fit s  test MAPE    tau   time.pt
       30  default (cost model)            9.8     1.20      4.26%  1.000    3.6 KB
       30  FLOPs baseline                                    9.27%  1.000
       30  --predictor mlp (original)    515.5   507.00      8.14%  1.000   48.1 MB
           (stopped at step 1800 of 5000; kept step 800)
      200  default (cost model)            6.1     0.90      9.32%  0.863    3.6 KB
      200  FLOPs baseline                                   13.85%  0.789
      200  --predictor mlp (original)    408.4   402.50     11.51%  0.842   48.1 MB
           (stopped at step 1200 of 5000; kept step 200)

Over 20 split seeds that default was at or below the baseline on 13/20 splits of the 30-arch
dataset (mean 10.5% vs 14.4%, worst 17.1% vs 30.6%) and 20/20 of the 200-arch one (7.8% vs
12.9%). A 3-arch test split under ~10% noise is a coin with a bias: even a model closer to the
truth loses some splits. The default now chooses by cross-validation on the training +
validation archs (superbert/latency/fit.py: the cost model at 8 ridge penalties toward the FLOPs
fit, or that fit, whichever has the lowest CV MAPE), fitted on those archs, and the baseline is
fitted on the same archs. Before -> after, over 20 split seeds (K datasets x 20 with
--data_seeds): splits at or below the baseline, mean test MAPE of the default vs the baseline
(2-core VM, load average 2-3 from another engineer's run, everything niced; nothing timed for
this comparison, the quickstart datasets are two such runs' own):

    dataset                                  archs  before                   after
    timed, seq 32, clock cpu (table above)      30  13/20 10.5% vs 14.4%     not re-timed (the
                                               200  20/20  7.8% vs 12.9%     machine was busy)
    two quickstart torch datasets (seq 128,     30  17/20  3.58% vs  8.01%   17/20  3.23% vs  8.32%
      wall clock, median of 10; passes 10.7%   100  17/20  5.94% vs 10.12%   17/20  5.95% vs 10.03%
      and 12.4% apart), first N archs           30  18/20  3.44% vs  7.97%   16/20  3.59% vs  8.10%
                                               100  18/20  5.76% vs 10.84%   19/20  5.55% vs 10.79%
      20 random 30-arch subsets of each x 10    30  15.2/20 6.34% vs 10.39%  15.7/20 6.11% vs 10.26%
    --synthetic (cost law, 3%)                  30  19/20  2.26% vs  4.61%   18/20  2.52% vs  4.35%
                                               200  20/20  2.52% vs  5.47%   20/20  2.50% vs  5.45%
      --data_seeds 10                           30  181/200 2.60% vs 6.97%   190/200 2.68% vs 6.88%
                                               200  199/200 2.46% vs 6.22%   199/200 2.45% vs 6.23%
    --synthetic --noise 0.1                     30  18/20  8.08% vs 10.09%   13/20  8.96% vs  9.54%
                                               200  12/20  8.48% vs  9.62%   12/20  8.39% vs  9.59%
      --data_seeds 10                           30  135/200 8.27% vs 11.43%  134/200 8.81% vs 11.33%
                                               200  170/200 8.32% vs 10.52%  171/200 8.29% vs 10.53%
    --synthetic --law flops --noise 0.1         30  14/20  8.20% vs  9.03%   11/20  8.41% vs  8.74%
                                               200   9/20  8.49% vs  8.53%   10/20  8.31% vs  8.43%
      --data_seeds 10                           30  102/200 8.28% vs 9.12%   133/200 7.98% vs 8.98%
                                               200  106/200 8.33% vs 8.66%   121/200 8.27% vs 8.68%

One dataset's 20 splits share its draw of noise, so rows swing both ways. The loss at 10% noise
and 30 archs comes mostly from one dataset (seed 35: 8.9% -> 11.5%): on the 4 splits whose test
archs include its smallest (2.0 ms), the training archs hold nothing as small, cross-validation
picks the strongest penalty (0.1), whose FLOPs-like intercept predicts it at 3.1-3.3 ms: test
MAPE 24-29% on those splits, where the old default (2.2-2.6 ms) had 10-17% and the baseline
43-59%. Over 40 datasets x 10 splits of 30 archs
(seeds 5000..5039, not a flag here): cost law at 10% noise 12.7 -> 13.1 of 20 at or below, mean
9.34% -> 9.33% (baseline 11.8%); FLOPs-proportional at 10% 9.9 -> 12.5 of 20, 9.23% -> 8.86%
(baseline 10.1%), the FLOPs fit chosen on 146 of 400; cost law at 3% 17.6 -> 17.6, 2.87% ->
2.86%. 200 archs, 10 x 10: cost law 18.4 -> 18.2, 8.17% both; FLOPs-proportional 11.2 -> 14.0,
8.16% -> 8.11%. So: never worse than the baseline on average in any of these, better than the
old default where the cost terms have nothing to add, and the same elsewhere; the split counts
stay noise-bound. A run takes 2-4 s, 0.2-0.4 s of it the fit with its cross-validation.

1. Time >= 500 archs sampled over the whole space (all layer counts; extracted dense models,
   1 thread) in --passes sweeps (default 2; resumable, so a second run only trains and searches).
2. The measurement noise floor: MAPE between two timings of the same arch (pass 2 vs pass 1,
   or a re-timed subset with --passes 1).
3. Train the predictor (80/10/10 split) and print test RMSE / MAPE / Kendall tau beside the
   FLOPs-proportional baseline fitted on the same archs as the predictor (targets: MAPE <= 3%,
   tau >= 0.95, better than the baseline); with the MLP, the cost model fitted beside it.
4. Enumerate candidates for a speedup, draw 10 archs (Fast), time them and BERT-base for real,
   and report how far the measured speedup lands from the target window.

    python bench/bench_latency_predictor.py                       # the original MLP (+ cost model)
    python bench/bench_latency_predictor.py --predictor cost      # the cost model only (seconds)
    python bench/bench_latency_predictor.py --hidden_dim 256 --lr 3e-4 --train_steps 5000
    python bench/bench_latency_predictor.py --defaults            # 30 and 200 archs, the defaults
    python bench/bench_latency_predictor.py --defaults --synthetic --no_mlp   # seconds
    python bench/bench_latency_predictor.py --backend onnxruntime --predictor cost
                                  # ONNX Runtime timings (own dataset, out_dir latency_onnxruntime);
                                  # the torch dataset's predictor is fitted and printed beside it

With --backend onnxruntime / onnxruntime-int8 every arch (and BERT-base) is exported to ONNX and
timed by ONNX Runtime under the same protocol; the searched archs of step 4 are timed with it too.

Measured here (2-core AMD EPYC VM, 800 archs, 1 thread, clock cpu, drift-corrected, min of 10
runs): two timings of the same arch differ by 3.0-3.6% MAPE (this VM's speed wanders by a few %
over seconds; with the median statistic 7.7%). One pass: the original MLP (lr 1e-5, 5000 steps,
729 s) test MAPE 3.70%, tau 0.961; FLOPs baseline 7.23%, 0.950; cost model 2.57% (2.6-3.3% over
four split seeds). Two passes (--passes 2, the mean): MLP 4.03%, tau 0.970 (856 s); cost model
2.01%, tau 0.975 (2.0-2.3% over four split seeds); FLOPs baseline 7.36%, 0.947. The MLP
overfits the noise of 640 training archs (train MAPE 1-2%); the 8-coefficient cost model
cannot. 10 searched 7x archs timed for real: 10/10 in the window (MLP); 8/10 (cost model,
the other two 2.2% and 3.3% past the fast edge: the machine ran ~4% faster than when the
dataset was timed).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from superbert.arch import FEATURE_NORM, LATENCY_NORM, SearchSpace
from superbert.cli import run_main, setup_logging
from superbert.latency import (BERT_BASE, COST_TERMS, Drift, LatencyConfig, LatencyPredictor,
                               Timer, TrainConfig, collect_latency_dataset, dataset_arrays,
                               format_latency_line, load_supernet_config, read_latency_dataset,
                               read_sidecar, regression_metrics, sample_archs,
                               time_against_reference, train_from_dataset, train_predictor)
from superbert.search import ORIGINAL_STEPS, LatencyWindow, enumerate_candidates, sample_generation
from superbert.timing_protocol import BACKENDS, TimingProtocol


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default=None,
                   help="default experiments/bench/latency, with _<backend> for ONNX Runtime (a "
                        "dataset holds one backend)")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS),
                   help="runtime that times the archs, BERT-base and the searched archs")
    p.add_argument("--compare_dir", default=None,
                   help="with an ONNX Runtime backend: a torch dataset's directory whose "
                        "predictor is fitted on the same recipe and printed beside (default "
                        "experiments/bench/latency when it holds lat.tmp)")
    p.add_argument("--num_archs", type=int, default=800)
    p.add_argument("--infer_cnt", type=int, default=10)
    p.add_argument("--clock", default="cpu", choices=["wall", "cpu"],
                   help="cpu (default here): robust to other processes sharing the 2 cores")
    p.add_argument("--statistic", default="min", choices=["median", "min"],
                   help="min (default here): the most repeatable on a machine whose speed wanders")
    p.add_argument("--no_drift_ref", action="store_true",
                   help="record raw timings (default here: drift-corrected, see --drift_ref)")
    p.add_argument("--passes", type=int, default=2,
                   help="timing sweeps over the archs; the predictor trains on the mean")
    p.add_argument("--repeat", type=int, default=40,
                   help="with --passes 1: archs re-timed for the noise floor")
    p.add_argument("--predictor", default="mlp", choices=["mlp", "cost"],
                   help="the predictor saved and used for the search (mlp: the cost model is "
                        "fitted beside it for comparison)")
    p.add_argument("--hidden_dim", type=int, default=2000)
    p.add_argument("--hidden_layer_num", type=int, default=3)
    p.add_argument("--train_steps", type=int, default=5000)
    p.add_argument("--bsz", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--latency_constraint", type=float, default=7)
    p.add_argument("--n_searched", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_search", action="store_true", help="stop after the predictor")
    p.add_argument("--defaults", action="store_true",
                   help="only the defaults bench: latency_predictor.py's defaults (and --predictor "
                        "mlp) on datasets of --sizes archs, beside the FLOPs baseline")
    p.add_argument("--sizes", type=int, nargs="+", default=[30, 200],
                   help="--defaults: dataset sizes (archs)")
    p.add_argument("--synthetic", action="store_true",
                   help="--defaults: a known cost law with --noise instead of timed datasets")
    p.add_argument("--law", default="cost", choices=["cost", "flops"],
                   help="--synthetic: the per-layer cost law, or latency exactly proportional "
                        "to FLOPs (plus a constant)")
    p.add_argument("--noise", type=float, default=0.03,
                   help="--synthetic: multiplicative Gaussian timing noise (default 3%%)")
    p.add_argument("--data_seeds", type=int, default=1,
                   help="--synthetic: also pool the split seeds over this many datasets (seeds "
                        "n, n+1, ...): one dataset's 20 splits share its draw of noise")
    p.add_argument("--from_dataset", nargs="+", default=None, metavar="LAT_TMP",
                   help="--defaults: instead of timing, the first N archs (a seeded sample "
                        "itself) of an existing dataset, for each of --sizes")
    p.add_argument("--no_mlp", action="store_true", help="--defaults: skip --predictor mlp")
    p.add_argument("--mlp_timeout", type=float, default=1800,
                   help="--defaults: seconds before a --predictor mlp run is stopped and reported "
                        "as not finished")
    p.add_argument("--split_seeds", type=int, default=20,
                   help="--defaults: split seeds the default is compared with the baseline over")
    p.add_argument("--drift_check", type=int, default=0, metavar="N",
                   help="only time N archs twice (two passes) and compare the repeatability of "
                        "raw and drift-corrected timings")
    args = p.parse_args(argv)
    setup_logging()
    if args.defaults:
        return defaults_bench(args)
    torch_dir = Path("experiments/bench/latency")
    out = Path(args.out_dir) if args.out_dir else (
        torch_dir if args.backend == "torch" else torch_dir.with_name(f"latency_{args.backend}"))
    data = out / "lat.tmp"
    dataset_cfg = LatencyConfig(output=str(data), num_archs=args.num_archs, seed=args.seed,
                                passes=args.passes, infer_cnt=args.infer_cnt, clock=args.clock,
                                statistic=args.statistic, drift_ref=not args.no_drift_ref,
                                hidden_step=4, ffn_step=4, backend=args.backend)
    protocol = dataset_cfg.protocol
    if args.drift_check:
        return drift_check(args.drift_check, protocol, args.seed)
    # 1. the dataset (the whole space on the training grid, every layer count)
    t0 = time.perf_counter()
    _, side, _ = collect_latency_dataset(dataset_cfg)
    records = read_latency_dataset(data)
    archs, ms = dataset_arrays(records)
    print(f"dataset: {len(archs)} archs x {len(records) / len(archs):.3g} passes, {ms.min():.2f}.."
          f"{ms.max():.2f} ms; BERT-base {side['base_latency_ms']:.2f} ms "
          f"({side['machine']['cpu_model']}, {side['protocol']['threads']} thread, clock "
          f"{side['protocol']['clock']}, {side['timing_subject']}, backend {args.backend}"
          f"{runtime_note(side)}); {time.perf_counter() - t0:.0f} s")

    # 2. the noise floor: two timings of the same arch (the first two passes, or re-timed now)
    config, scheme, _ = load_supernet_config(None)
    timer = Timer(config, side["scheme"], protocol)
    if args.passes >= 2:
        timings: dict = {}
        for a, t in records:  # in file order: pass 1 first
            timings.setdefault(a, []).append(t)
        pairs = np.array([ts[:2] for ts in timings.values() if len(ts) >= 2])
        noise = regression_metrics(pairs[:, 1], pairs[:, 0])
        what = f"all {len(pairs)} archs, pass 2 vs pass 1"
    else:
        rng = random.Random(args.seed)
        idx = rng.sample(range(len(archs)), min(args.repeat, len(archs)))
        drift = Drift(timer) if side["protocol"].get("drift_ref") else None
        again = []
        for i in idx:  # timed like the dataset: drift-corrected when the dataset is
            t = timer.time(archs[i]).ms
            again.append(t * side["drift_ref_ms"] / drift.update() if drift else t)
        noise = regression_metrics(np.asarray(again), ms[idx])
        what = f"{len(idx)} archs timed again"
    print(f"noise floor, {what}: MAPE {noise.mape:.2f}%, Kendall tau {noise.kendall_tau:.4f} "
          f"(the mean of {args.passes} pass(es) is off its true value by about "
          f"{noise.mape / np.sqrt(2 * args.passes):.2f}%)")

    # 3. the predictor against the FLOPs baseline (and the cost model, fitted on the same split)
    cfg = TrainConfig(predictor=args.predictor, hidden_dim=args.hidden_dim,
                      hidden_layer_num=args.hidden_layer_num, train_steps=args.train_steps,
                      bsz=args.bsz, lr=args.lr, feature_norm=FEATURE_NORM,
                      lat_norm=LATENCY_NORM, seed=args.seed)
    pred, rep = train_from_dataset(data, out / "time.pt", cfg, plot=out / "predictor.png",
                                   progress=False)
    how = (f", {cfg.train_steps} steps, lr {cfg.lr:g}" if args.predictor == "mlp" else "")
    print(f"predictor {pred.describe()}{how}, fitted on {pred.backend} timings in "
          f"{rep.seconds:.1f} s; split {rep.train.n}/{rep.valid.n}/{rep.test.n}")
    print(f"  test {args.predictor:>4} predictor : {rep.test.line()}")
    if args.predictor == "mlp":
        _, cost = train_predictor(archs, ms, replace(cfg, predictor="cost"), progress=False)
        print(f"  test cost predictor : {cost.test.line()}  (same split, {cost.seconds:.1f} s)")
    print(f"  test FLOPs baseline : {rep.flops_test.line()}")
    compare = Path(args.compare_dir) if args.compare_dir else torch_dir
    if args.backend != "torch" and (compare / "lat.tmp").exists():
        # the same recipe on the torch timings: how well each runtime's latency is predicted
        _, other = train_from_dataset(compare / "lat.tmp", out / "time_torch.pt", cfg,
                                      progress=False)
        print(f"  test {args.predictor:>4} on torch   : {other.test.line()}  (same recipe, "
              f"{compare / 'lat.tmp'})")
    ok = rep.test.mape <= 3 and rep.test.kendall_tau >= 0.95
    better = rep.test.mape < rep.flops_test.mape and rep.test.kendall_tau > rep.flops_test.kendall_tau
    print(f"  {args.predictor}: targets MAPE <= 3% and tau >= 0.95: {'met' if ok else 'MISSED'}; "
          f"better than the FLOPs baseline on both: {'yes' if better else 'NO'}; plot "
          f"{out / 'predictor.png'}")

    if args.skip_search:
        timer.close()
        return
    # 4. searched archs, timed for real
    window = LatencyWindow(pred.base_latency_ms, args.latency_constraint)
    space = SearchSpace(scheme=side["scheme"], **ORIGINAL_STEPS)
    cands = enumerate_candidates(pred, space, window, progress=False)
    picked = sample_generation(cands.archs(), pred, window, args.n_searched,
                               random.Random(args.seed), fast=True)
    timed = time_against_reference(timer, picked, BERT_BASE)
    timer.close()
    base_now = timed.reference_ms
    lo_x, hi_x = base_now / window.hi, base_now / window.lo
    print(f"{len(cands):,} candidates for {args.latency_constraint:g}x; BERT-base now "
          f"{base_now:.2f} ms; target speedup window {lo_x:.2f}x..{hi_x:.2f}x")
    devs = []
    for a, m, x in zip(timed.archs, timed.arch_ms, timed.speedups):
        dev = 0.0 if lo_x <= x <= hi_x else (x - hi_x) / hi_x if x > hi_x else (x - lo_x) / lo_x
        devs.append(dev)
        print(f"  {a.short():<26} predicted {pred.predict_one(a):7.2f} ms  measured {m:7.2f} ms  "
              f"speedup {x:5.2f}x  {'in window' if dev == 0 else f'{100 * dev:+.1f}% outside'}")
    devs = np.asarray(devs)
    print(f"measured speedup in the window for {int(np.sum(devs == 0))}/{len(devs)} archs; "
          f"largest miss {100 * np.max(np.abs(devs)):.1f}% beyond the window edge")


# ---- --defaults: latency_predictor.py's defaults against the FLOPs baseline ---------------------
# A known cost law (ms of a BERT forward by where it spends its time) for --synthetic: the FFN
# and attention matmuls, per-width elementwise work, per-layer overhead, embeddings, a constant.
SYNTHETIC_LAW = {"L*d*f": 6e-6, "L*d*q": 1.1e-5, "L*d": 4e-4, "L*f": 2e-4, "L*q": 1e-3,
                 "L": 0.4, "d": 5e-4, "1": 0.05}
ROOT = Path(__file__).resolve().parents[1]


def synthetic_dataset(path: Path, n: int, seed: int, noise: float = 0.03,
                      law: str = "cost") -> None:
    """n archs with latencies of SYNTHETIC_LAW (law "cost") or 2e-8 ms per FLOP at sequence
    length 128 plus 0.5 ms (law "flops"), times (1 + noise * N(0, 1))."""
    archs = sample_archs(SearchSpace(scheme="kd"), n, seed)
    rng = np.random.default_rng(seed)
    lines = []
    for a in archs:
        L, d, f, q = a.layers, a.hidden, a.ffn, a.qkv
        terms = dict(zip(COST_TERMS, (L * d * f, L * d * q, L * d, L * f, L * q, L, d, 1)))
        exact = (sum(SYNTHETIC_LAW[t] * terms[t] for t in COST_TERMS) if law == "cost"
                 else 2e-8 * a.flops(128) + 0.5)
        ms = exact * (1 + noise * rng.standard_normal())
        lines.append(format_latency_line(a, round(float(ms), 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def timed_dataset(path: Path, n: int, seed: int, log: Path) -> None:
    """inference_time_evaluation.py as a user runs it (resumable: a second run times nothing)."""
    cmd = [sys.executable, "inference_time_evaluation.py", "--num_archs", str(n), "--seed",
           str(seed), "--output", str(path), "--max_seq_length", "32", "--infer_cnt", "5",
           "--clock", "cpu", "--statistic", "min", "--passes", "2", "--no_progress"]
    with open(log, "a") as fh:
        if subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"error: inference_time_evaluation.py failed; see {log}")


def subset_dataset(sources: list[str], path: Path, n: int) -> int:
    """The records of the first n distinct archs of `sources` (every pass of them) into path,
    with the first source's sidecar; the number of archs written (fewer if they hold fewer)."""
    keep: dict = {}
    lines = []
    for src in sources:
        for a, ms in read_latency_dataset(src):
            if a not in keep and len(keep) < n:
                keep[a] = True
            if a in keep:
                lines.append(format_latency_line(a, ms))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    side = Path(str(sources[0]) + ".json")
    if side.exists():
        Path(str(path) + ".json").write_text(side.read_text())
    return len(keep)


def run_predictor(data: Path, ckpt: Path, extra: list[str], log: Path,
                  timeout: float | None) -> dict | None:
    """latency_predictor.py --lat_dataset_path data --ckpt_path ckpt [extra]: wall seconds, fit
    seconds, the test metrics it saved (its own and the FLOPs baseline's), time.pt's size, the
    MLP's early-stop line; None when it ran past `timeout`."""
    cmd = [sys.executable, "latency_predictor.py", "--lat_dataset_path", str(data),
           "--ckpt_path", str(ckpt), *extra]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "SUPERBERT_PROGRESS_SECONDS": "60"})
    except subprocess.TimeoutExpired as err:
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n(stopped after {timeout:.0f} s)\n"
                     f"{(err.stderr or b'').decode(errors='replace')}")
        return None
    wall = time.perf_counter() - t0
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    if res.returncode:
        sys.exit(f"error: latency_predictor.py failed (exit {res.returncode}); see {log}")
    meta = LatencyPredictor.load(ckpt).meta
    metrics = meta["metrics"]
    fit = re.search(r"trained in ([0-9.]+) s", res.stdout)
    stop = re.search(r"^MLP (stopped at .*|ran all .*)$", res.stdout, re.M)
    return {"wall": wall, "fit": float(fit.group(1)) if fit else float("nan"),
            "test": metrics["test"], "flops": metrics["flops_baseline_test"],
            "bytes": ckpt.stat().st_size, "stop": stop.group(1) if stop else "",
            "chosen": (meta.get("selection") or {}).get("chosen", "cost model")}


def defaults_bench(args) -> None:
    out = Path(args.out_dir or ("experiments/bench/latency_defaults"
                                + ("_synthetic" if args.synthetic else
                                   "_subsets" if args.from_dataset else "")))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    load = os.getloadavg()
    law = "known cost law" if args.law == "cost" else "latency proportional to FLOPs"
    kind = (f"synthetic datasets ({law}, {100 * args.noise:g}% noise)" if args.synthetic
            else f"subsets of {' '.join(args.from_dataset)}" if args.from_dataset
            else "timed datasets")
    print(f"{kind}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
          f"{os.cpu_count()} CPUs; "
          f"log {log}")
    print(f"{'archs':>5}  {'predictor':<26} {'script s':>8} {'fit s':>8} {'test MAPE':>9} "
          f"{'tau':>6} {'time.pt':>9}")
    for n in args.sizes:
        data = out / f"archs{n}" / "lat.tmp"
        t0 = time.perf_counter()
        if args.synthetic:
            synthetic_dataset(data, n, seed=n, noise=args.noise, law=args.law)
        elif args.from_dataset:
            if subset_dataset(args.from_dataset, data, n) < n:
                print(f"{n:>5}  skipped: {' '.join(args.from_dataset)} holds fewer archs")
                continue
        else:
            data.parent.mkdir(parents=True, exist_ok=True)
            timed_dataset(data, n, seed=n, log=log)
        made = time.perf_counter() - t0
        default = run_predictor(data, data.parent / "time.pt", ["--no_progress"], log, None)
        rows = [(f"default ({default['chosen']})", default, default["test"]),
                ("FLOPs baseline", None, default["flops"])]
        mlp = None
        if not args.no_mlp:
            mlp = run_predictor(data, data.parent / "time_mlp.pt", ["--predictor", "mlp"], log,
                                args.mlp_timeout)
            rows.append(("--predictor mlp (original)", mlp, mlp["test"] if mlp else None))
        for name, run, test in rows:
            if test is None:
                print(f"{n:>5}  {name:<26} {'> ' + format(args.mlp_timeout, '.0f'):>8} "
                      f"{'':>8} {'not finished':>9}")
                continue
            cells = (f"{run['wall']:8.1f} {run['fit']:8.2f}" if run else f"{'':>8} {'':>8}")
            size = ("" if not run else f"{run['bytes'] / 1e6:.1f} MB" if run["bytes"] >= 1e5
                    else f"{run['bytes'] / 1e3:.1f} KB")
            print(f"{n:>5}  {name:<26} {cells} {test['mape']:8.2f}% {test['kendall_tau']:6.3f} "
                  f"{size:>9}")
        if mlp and mlp["stop"]:
            print(f"{'':>5}  MLP {mlp['stop']}")
        # the default against the baseline over split seeds (the library, as the script fits)
        archs, ms = dataset_arrays(read_latency_dataset(data))
        side = read_sidecar(data)
        seq_len = int(((side or {}).get("protocol") or {}).get("seq_len") or 128)
        how = ("written" if args.synthetic else "taken" if args.from_dataset else "timed")
        print(f"{'':>5}  {len(archs)} archs ({how} in {made:.0f} s); "
              + split_seed_line(archs, ms, seq_len, args.split_seeds))
        if args.synthetic and args.data_seeds > 1:
            ours, base, chosen = [], [], []
            for k in range(1, args.data_seeds):  # dataset seed n is the one above
                extra = out / f"archs{n}" / f"lat_{k}.tmp"
                synthetic_dataset(extra, n, seed=n + k, noise=args.noise, law=args.law)
                more = split_seed_runs(*dataset_arrays(read_latency_dataset(extra)), seq_len,
                                       args.split_seeds)
                for acc, new in zip((ours, base, chosen), more):
                    acc += new
            print(f"{'':>5}  {args.data_seeds} such datasets (seeds {n}..{n + args.data_seeds - 1})"
                  f"; " + summary_line(*(a + b for a, b in zip(
                      split_seed_runs(archs, ms, seq_len, args.split_seeds),
                      (ours, base, chosen)))))
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def split_seed_runs(archs, ms, seq_len: int, split_seeds: int) -> tuple[list, list, list]:
    """The default's and the baseline's test MAPE, and the default's choice, per split seed."""
    ours, base, chosen = [], [], []
    for seed in range(split_seeds):
        _, rep = train_predictor(archs, ms, TrainConfig(seed=seed), progress=False,
                                 seq_len=seq_len)
        ours.append(rep.test.mape)
        base.append(rep.flops_test.mape)
        chosen.append(rep.selection.chosen if rep.selection else "cost model")
    return ours, base, chosen


def summary_line(ours: list, base: list, chosen: list) -> str:
    # a FLOPs fit chosen predicts what the baseline does (to float32 rounding): a tie
    wins = sum(o <= b * (1 + 1e-5) for o, b in zip(ours, base))
    fell_back = sum(c != "cost model" for c in chosen)
    return (f"over {len(ours)} splits the default's test MAPE is at or below the baseline's on "
            f"{wins} (the FLOPs fit chosen on {fell_back}): mean {np.mean(ours):.2f}% vs "
            f"{np.mean(base):.2f}%, worst {np.max(ours):.2f}% vs {np.max(base):.2f}%")


def split_seed_line(archs, ms, seq_len: int, split_seeds: int) -> str:
    return summary_line(*split_seed_runs(archs, ms, seq_len, split_seeds))


def runtime_note(side: dict) -> str:
    runtime = side.get("runtime") or {}
    if "ort_version" not in runtime:
        return ""
    return f" {runtime.get('precision')}, onnxruntime {runtime['ort_version']}"


def drift_check(n: int, protocol: TimingProtocol, seed: int) -> None:
    config, scheme, _ = load_supernet_config(None)
    timer = Timer(config, scheme, protocol)
    drift = Drift(timer)
    ref0 = drift.now()
    archs = sample_archs(SearchSpace(scheme=scheme), n, seed)
    passes = []
    for _ in range(2):
        raw, corrected = [], []
        for a in archs:
            t = timer.time(a).ms
            raw.append(t)
            corrected.append(t * ref0 / drift.update())
        passes.append((np.asarray(raw), np.asarray(corrected)))
    (r1, c1), (r2, c2) = passes
    print(f"drift check, {n} archs timed in two passes: raw MAPE {regression_metrics(r2, r1).mape:.2f}% "
          f"(tau {regression_metrics(r2, r1).kendall_tau:.4f}); drift-corrected MAPE "
          f"{regression_metrics(c2, c1).mape:.2f}% (tau {regression_metrics(c2, c1).kendall_tau:.4f})")


if __name__ == "__main__":
    run_main(main)
