"""generate_data speed and memory, against baselines measured in the same run (ratios).

    python bench/bench_generate_data.py [--corpus FILE_OR_DIR] [--repeats 3] [--skip_memory]

Corpus: the books (`zcat data/books/*.txt.gz`, or /work/shared/data/books) unless --corpus
names a corpus file or a directory of *.txt.gz / *.txt files.

1. End-to-end tokens/s of generate_pretraining_data (tokenise, pack, write bin shards; worker
   start and tokenizer load included) with 1 and with all-core workers, against
   (a) the raw batched fast-tokenizer call over the same non-blank lines, in one process with
       the Rust thread pool, ids included: the fastest of `tokenizer(lines)`,
       `backend.encode_batch(lines)` and `backend.encode_batch_fast(lines)` is the ceiling.
       Target: end-to-end >= 75% of it.
   (b) the original's way: one `tokenize` call per line in one process with the pure-Python
       BERT tokenizer (as the original). Target: >= 2x. Also (b') the same with the fast
       tokenizer, a stronger baseline: the per-line call costs about as much CPU per token as
       the batched one, so against (b') the gain is the use of all cores.
2. Peak memory (max RSS of the main process and of the workers) with and without
   --reduce_memory on the corpus and on 4 copies of it: flat with --reduce_memory.

Methods alternate within each repeat and medians are reported, so machine noise hits all.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from superbert.data.config import DataConfig
from superbert.data.generate import generate_pretraining_data
from superbert.hf import bundled_vocab_path, load_tokenizer


def default_books() -> Path:
    here = ROOT / "data" / "books"
    return here if list(here.glob("*.txt.gz")) else Path("/work/shared/data/books")


def materialise_corpus(source: Path, out: Path) -> Path:
    """One plain-text corpus file (the books dir is zcat-ed, in name order)."""
    if source.is_file():
        return source
    files = sorted(source.glob("*.txt.gz")) or sorted(source.glob("*.txt"))
    if not files:
        sys.exit(f"error: no *.txt.gz or *.txt corpus files in {source}")
    with open(out, "wb") as dst:
        for f in files:
            with (gzip.open(f, "rb") if f.suffix == ".gz" else open(f, "rb")) as src:
                shutil.copyfileobj(src, dst)
    return out


def read_sentences(corpus: Path) -> list[str]:
    opener = gzip.open if corpus.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(corpus, "rt", encoding="utf-8") as fh:
        return [s for s in (line.strip() for line in fh) if s]


def slow_tokenizer(vocab: Path):
    """The pure-Python BERT tokenizer, the kind the original's generate_data.py used."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    except ImportError:  # transformers 4.x: the slow tokenizer is still BertTokenizer
        from transformers import BertTokenizer as BertTokenizerLegacy
    return BertTokenizerLegacy(vocab_file=str(vocab), do_lower_case=True)


def cpu_seconds() -> float:
    t = os.times()  # this process (all threads) and its reaped children (the pool workers)
    return t.user + t.system + t.children_user + t.children_system


def timed(fn) -> tuple[float, float, int]:
    t0, c0 = time.perf_counter(), cpu_seconds()
    tokens = fn()
    return time.perf_counter() - t0, cpu_seconds() - c0, tokens


MEMORY_CHILD = r"""
import json, resource, sys
from superbert.data.config import DataConfig
from superbert.data.generate import generate_pretraining_data
from superbert.hf import load_tokenizer

load_tokenizer(sys.argv[4])  # imports and tokenizer first: the pass's own memory is what follows


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


rss_before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
    fh.write("5")
meta = generate_pretraining_data(DataConfig(
    train_corpus=sys.argv[2], output_dir=sys.argv[3], bert_model=sys.argv[4], do_lower_case=True,
    reduce_memory=sys.argv[5] == "1", num_workers=int(sys.argv[6]), progress=False))
print(json.dumps({"tokens": meta["tokens"], "before_kb": rss_before, "main_kb": status("VmHWM"),
                  "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def peak_memory(corpus: Path, out: Path, reduce_memory: bool, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(ROOT), str(corpus), str(out),
                          str(bundled_vocab_path()), "1" if reduce_memory else "0", str(workers)],
                         capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                   help="workers of the all-core end-to-end run (default: all cores)")
    p.add_argument("--skip_memory", action="store_true")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_data."))
    try:
        corpus = materialise_corpus(args.corpus or default_books(), tmp / "corpus.txt")
        vocab = bundled_vocab_path()
        tokenizer = load_tokenizer(vocab, do_lower_case=True)
        backend = tokenizer.backend_tokenizer
        sentences = read_sentences(corpus)
        print(f"corpus {corpus} ({corpus.stat().st_size / 1e6:.1f} MB, {len(sentences):,} "
              f"sentences); {os.cpu_count()} CPU cores; load {os.getloadavg()[0]:.1f}")

        def raw_backend():
            return sum(len(e.ids) for e in backend.encode_batch(sentences, add_special_tokens=False))

        def raw_backend_fast():
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return sum(len(e.ids) for e in encode(sentences, add_special_tokens=False))

        def raw_call():
            return sum(map(len, tokenizer(sentences, add_special_tokens=False)["input_ids"]))

        slow = slow_tokenizer(vocab)

        def original_way():
            return sum(len(slow.tokenize(s)) for s in sentences)

        def per_line_fast():
            return sum(len(tokenizer.tokenize(s)) for s in sentences)

        def ours(workers):
            def run():
                out = tmp / f"out{workers}"
                shutil.rmtree(out, ignore_errors=True)
                meta = generate_pretraining_data(DataConfig(
                    train_corpus=corpus, output_dir=out, bert_model=str(vocab),
                    do_lower_case=True, num_workers=workers, progress=False))
                return meta["tokens"]
            return run

        methods = {"(a) raw encode_batch": raw_backend, "(a) raw encode_batch_fast": raw_backend_fast,
                   "(a) raw tokenizer(lines)": raw_call,
                   "(b) original: slow tokenize per line": original_way,
                   "(b') fast tokenize per line": per_line_fast,
                   "ours, 1 worker": ours(1), f"ours, {args.num_workers} workers": ours(args.num_workers)}
        times: dict[str, list[float]] = {k: [] for k in methods}
        cpu: dict[str, list[float]] = {k: [] for k in methods}
        tokens: dict[str, int] = {}
        raw_backend()  # warm-up (page cache, thread pool)
        for r in range(args.repeats):
            for name, fn in methods.items():
                dt, dc, n = timed(fn)
                times[name].append(dt)
                cpu[name].append(dc)
                tokens[name] = n
        assert len(set(tokens.values())) == 1, tokens
        n = next(iter(tokens.values()))
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        print(f"  {'method':34s} {'wall':>8s} k tokens/s  {'CPU':>8s} k tokens/CPU-s  "
              f"(medians of {args.repeats})")
        for k, v in rate.items():
            print(f"  {k:34s} {v / 1e3:8.0f}               {n / statistics.median(cpu[k]) / 1e3:8.0f}")
        ceiling = max(v for k, v in rate.items() if k.startswith("(a)"))
        best = max(rate["ours, 1 worker"], rate[f"ours, {args.num_workers} workers"])
        orig, per_line = rate["(b) original: slow tokenize per line"], rate["(b') fast tokenize per line"]
        for k in ("ours, 1 worker", f"ours, {args.num_workers} workers"):
            print(f"{k}: {rate[k] / ceiling:.2f} of the raw batched call (target >= 0.75), "
                  f"{rate[k] / orig:.2f}x the original's way (target >= 2), "
                  f"{rate[k] / per_line:.2f}x the fast tokenizer per line")
        print(f"best end-to-end: {best / ceiling:.2f} of (a), "
              f"{best / orig:.2f}x (b); {n:,} tokens")

        if not args.skip_memory:
            big = tmp / "corpus_x4.txt"
            with open(big, "wb") as dst:
                for _ in range(4):
                    with open(corpus, "rb") as src:
                        shutil.copyfileobj(src, dst)
            print("peak RSS of the main process during the pass (MB), and of the largest worker")
            for reduce_memory in (True, False):
                rows = []
                for c in (corpus, big):
                    m = peak_memory(c, tmp / "mem_out", reduce_memory, args.num_workers)
                    rows.append(m)
                    print(f"  reduce_memory={reduce_memory!s:5s} {m['tokens']:>10,} tokens: "
                          f"main {m['main_kb'] / 1024:7.1f} (before the pass "
                          f"{m['before_kb'] / 1024:6.1f}), workers {m['workers_kb'] / 1024:6.1f}")
                extra = [(m["main_kb"] - m["before_kb"]) / 1024 for m in rows]
                print(f"  reduce_memory={reduce_memory}: memory the pass adds, corpus x1 -> x4: "
                      f"{extra[0]:.1f} -> {extra[1]:.1f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
