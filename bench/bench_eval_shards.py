"""Candidate evaluation split between processes: 2 processes x 1 thread vs 1 process x 1 thread.

    python bench/bench_eval_shards.py [--size tiny|small] [--out bench_out/eval_shards]

The same 8 jobs (4 archs x the book tasks sst-2 and mnli, 1 seed) of a freshly initialised
supernet are evaluated by `superbert_run_en_classifier.py` once in one process and once by two
`--shard I/2` processes started together, every process with one thread
(OMP_NUM_THREADS=1), each run into its own output directory. Printed: both wall times
(process start-up included, which both pay), the speedup (target >= 1.8x), and whether the two
runs wrote the same blocks (they must: a job scores the same whoever runs it).

The machine must have two otherwise idle cores for the speedup to mean anything.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from superbert.arch import Arch, write_arch_file
from superbert.configuration import AutoTinyBertConfig
from superbert.hf import bundled_vocab_path, save_model
from superbert.modeling import AutoTinyBertForMaskedLM
from superbert.results import read_results
from superbert.tasks.books import BookTasksConfig, make_book_tasks

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # supernet (layers, hidden, heads, ffn), archs, proxy steps, examples
    "tiny": ((2, 64, 2, 128), [Arch(1, 32, 1, 32, 64), Arch(2, 64, 2, 64, 128),
                               Arch(1, 64, 2, 64, 96), Arch(2, 48, 1, 32, 64)], 8, 256),
    "small": ((4, 256, 4, 1024), [Arch(2, 128, 2, 128, 512), Arch(4, 256, 4, 256, 1024),
                                  Arch(3, 192, 3, 192, 768), Arch(4, 128, 2, 128, 256)], 40, 1024),
}


def make_supernet(out: Path, layers: int, hidden: int, heads: int, ffn: int) -> Path:
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    config = AutoTinyBertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=ffn,
                                qkv_size=hidden, max_position_embeddings=128)
    return save_model(AutoTinyBertForMaskedLM(config), out, bundled_vocab_path())


def evaluate(argv: list[str], out: Path, shards: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID"):
        env.pop(var, None)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "superbert_run_en_classifier.py", *argv,
                               "--output_dir", str(out),
                               *(["--shard", f"{i}/{shards}"] if shards > 1 else [])],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(shards)]
    logs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - t0
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            sys.exit(f"the evaluator failed:\n{log[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--out", type=Path, default=Path("bench_out/eval_shards"))
    a = ap.parse_args()
    dims, archs, steps, examples = SIZES[a.size]
    work = a.out / a.size
    books = work / "books"
    if not (books / "book_tasks.json").exists():
        make_book_tasks(BookTasksConfig(train_examples=examples, dev_examples=examples // 2),
                        books)
    supernet = make_supernet(work / "supernet", *dims)
    cands = work / "archs.cands"
    write_arch_file(cands, archs)
    argv = ["--model", str(supernet), "--arches_file", str(cands), "--data_dir",
            f"{books / 'SST-2'} {books / 'MNLI'}", "--task_name", "sst-2 mnli",
            "--do_lower_case", "--no_cuda", "--max_seq_length", "128", "--train_batch_size", "16",
            "--seed", "1", "--no_progress", "--cache_dir", str(work / "cache")]
    for name in ("warmup", "one", "two"):  # fresh outputs: a kept file would be resumed
        shutil.rmtree(work / name, ignore_errors=True)
    # Tokenize once, outside the timings (both runs then read the feature cache).
    evaluate([*argv, "--max_steps", "1", "--eval_step", "1"], work / "warmup", 1)
    argv += ["--max_steps", str(steps), "--eval_step", str(steps)]
    one = evaluate(argv, work / "one", 1)
    two = evaluate(argv, work / "two", 2)
    key = lambda r: (r.task, str(r.arch), r.seed, r.best)  # noqa: E731
    same = (sorted(map(key, read_results(work / "one" / "subbert.results")))
            == sorted(map(key, read_results(work / "two" / "subbert.results"))))
    n = len(archs) * 2
    print(f"{n} jobs ({a.size}: supernet {dims}, {steps} steps each), 1 thread per process")
    print(f"  1 process : {one:7.1f} s")
    print(f"  2 shards  : {two:7.1f} s")
    print(f"  speedup   : {one / two:7.2f}x (target >= 1.8x)")
    print(f"  same blocks in both runs: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
