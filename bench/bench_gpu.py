"""The GPU check: one command that measures, on one CUDA GPU in under 8 minutes, whether the GPU
paths work and how fast they are.

    python bench/bench_gpu.py --out bench_gpu_out          # one CUDA GPU, about 7.5 min
    python bench/bench_gpu.py --dry --out /tmp/bench_gpu   # CPU, tiny dims (tests/test_bench_gpu.py)
    python bench/bench_gpu.py --sections latency torchrun  # a rerun of some sections only

Sections, each under a time cap (a share of --budget); every case is one or more table rows, and a
case that fails is one row with its error line (full traceback in <out>/bench_gpu.log) while the
rest still run:

1. pretrain: the SuperPLM pre-training loop (`pretraining.trainer.Trainer`, MLM objective) on the
   supernet built with the project's classes (8 layers / 768 / 12 heads / FFN 3072, vocab
   30522), for the full arch and one sub-arch drawn from the supernet's search space, each with
   bf16 autocast and with fp16 autocast + GradScaler, torch.compile off and on
   (`model.bert.compile()`: pre_training.py itself has no compile flag). Batch --batch x --seq;
   5 untimed steps (compilation happens there), then up to --steps steps or 10 s. Tokens/s over
   the timed steps (data loading, optimizer and the loop's per-step syncs included) and MFU:
   training FLOPs (3 x the encoder's forward FLOPs, `Arch.flops`: projections, FFN, attention;
   plus 6 x (d^2 + d x vocab) per masked token for the MLM head) per second over the GPU's
   dense bf16/fp16 peak (`PEAK_TFLOPS`, by device name; unknown: n/a, or --peak_tflops).
   The data are random wordpieces in sequences of exactly --seq tokens, so shapes are static.
2. torchrun: pre_training.py itself as 2 ranks under torchrun (through `_one_gpu_rank.py`, which
   puts both ranks on cuda:0 when there is one GPU). NCCL first; if NCCL refuses two ranks on one
   GPU, gloo (over the same CUDA tensors), said in the row. Passed = exit 0, every step logged
   with a finite loss, the last step's checkpoint written; steps/s from its train_log.jsonl
   (two ranks sharing one GPU: a smoke test of the distributed path, not a scaling figure).
3. finetune: superbert_run_en_classifier.py (its main(), in this process) fine-tuning the full
   arch on the SST-2-style book task (make_book_tasks.py), fp32 (the default) and --fp16; two
   seeds, the second (warm) one timed: examples/s = steps x batch / its seconds, which include
   one dev pass of 128 examples.
4. latency: the latency protocol (`latency.Timer`, `time_against_reference`: extracted dense
   models, random weights, median of the timed forwards, fp32 eager) with models and inputs on
   the GPU and a synchronize after every forward, at batch 1 and 32 x 128 tokens: BERT-base (the
   reference), the full arch and the sub-arch, with their speedups.

--dry runs the same code on the CPU with tiny dims and 2-3 steps: fp16 cases are skipped (fp16
autocast + GradScaler need CUDA), torch.compile runs dynamo only (backend "eager"), torchrun uses
gloo, the latency reference is the tiny full arch. Writes <out>/bench_gpu.md and
<out>/bench_gpu.json (the table as rows), <out>/bench_gpu.log; exit 1 if any case failed or
timed out.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the top-level scripts (superbert_run_en_classifier.py, ...)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from superbert.arch import Arch, SearchSpace, arch_of_config
from superbert.configuration import AutoTinyBertConfig
from superbert.data.shards import JSON_SHARD
from superbert.distributed import DistEnv
from superbert.hf import bundled_vocab_path, save_model
from superbert.latency import BERT_BASE, Timer, time_against_reference
from superbert.modeling import AutoTinyBertForMaskedLM
from superbert.pretraining.config import PretrainConfig
from superbert.pretraining.run import build_data
from superbert.pretraining.student import Vocab
from superbert.pretraining.trainer import Trainer
from superbert.timing_protocol import TimingProtocol

# Dense (no sparsity) bf16 = fp16 tensor-core peak in TFLOPs, by a substring of
# torch.cuda.get_device_name(); the first match wins, so specific names come first.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0))
# Each section's share of --budget (its time cap); the rest of the 8 minutes is start-up.
SHARES = {"pretrain": 0.56, "torchrun": 0.20, "finetune": 0.14, "latency": 0.10}
SECTIONS = tuple(SHARES)

log = logging.getLogger("bench_gpu")


# ---- rows and the table --------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table. status: ok (value is the result), skipped (note says why),
    failed (note is the error line) or timeout (the case ran past its cap)."""

    section: str
    case: str
    value: float | None = None
    unit: str = ""
    mfu: float | None = None  # a fraction of the peak; None: no peak known or not applicable
    status: str = "ok"
    note: str = ""
    seconds: float = 0.0

    def result(self) -> str:
        if self.value is None:
            return "-"
        digits = 0 if abs(self.value) >= 100 else 2
        return f"{self.value:,.{digits}f} {self.unit}".strip()

    def mfu_text(self) -> str:
        return "-" if self.mfu is None else f"{100 * self.mfu:.1f}%"


COLUMNS = ("section", "case", "result", "MFU", "status", "s", "note")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = (r.section, r.case, r.result(), r.mfu_text(), r.status, f"{r.seconds:.0f}",
                 r.note.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


# ---- time caps -----------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised by SIGALRM at a case's cap; a BaseException, so no `except Exception` swallows it."""


@contextlib.contextmanager
def hard_cap(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (SIGALRM: the main thread, between Python bytecodes; a
    long compile or a training loop stops at its next Python line)."""
    def fire(signum, frame):
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Case:
    """A measurement: `run` returns its rows. `skip` (a reason) reports it without running it;
    `cap` bounds it within its section's cap; `needs` is the least time worth starting it with."""

    section: str
    name: str
    run: Callable[[], list[Row]] | None = None
    skip: str | None = None
    cap: float = math.inf
    needs: float = 0.0


def run_cases(cases: list[Case], cap: float, logfile: Path, report: Callable[[Row], None]) -> None:
    """Run a section's cases in order within `cap` seconds."""
    deadline = time.perf_counter() + cap
    for case in cases:
        left = deadline - time.perf_counter()
        if case.skip is not None:
            report(Row(case.section, case.name, status="skipped", note=case.skip))
            continue
        if left < max(case.needs, 1.0):
            report(Row(case.section, case.name, status="skipped",
                       note=f"section time cap ({cap:.0f} s) reached: {left:.0f} s left"))
            continue
        limit = min(left, case.cap)
        t0 = time.perf_counter()
        try:
            with hard_cap(limit):
                rows = case.run()
        except CaseTimeout:
            rows = [Row(case.section, case.name, status="timeout",
                        note=f"stopped at its {limit:.0f} s cap")]
        except Exception as err:  # one failing case is one row; the rest still run
            with open(logfile, "a", encoding="utf-8") as fh:
                fh.write(f"--- {case.section} / {case.name} failed:\n{traceback.format_exc()}\n")
            rows = [Row(case.section, case.name, status="failed", note=error_line(err))]
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        spent = time.perf_counter() - t0
        for row in rows:
            row.seconds = spent / len(rows)
            report(row)


class Launched:
    """A command started in the repository root in its own process group, its output appended
    to `logfile`. `wait` ends the whole group (torchrun and its ranks) on a timeout, or if this
    process is interrupted while waiting: SIGTERM, then SIGKILL after 10 s."""

    def __init__(self, cmd: list[str], logfile: Path, env: dict[str, str] | None = None):
        self.t0 = time.perf_counter()
        with open(logfile, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})},
                                         start_new_session=True)

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """(exit status, or None on a timeout; seconds since the start)."""
        rc = None
        try:
            rc = self.proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.stop()
        return rc, time.perf_counter() - self.t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            _end_group(self.proc)


def _end_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, CaseTimeout):
        pass  # a case's cap firing here must not leave the group running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, CaseTimeout):
            proc.wait(timeout=5)


# ---- the plan: GPU sizes or the dry run's ----------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    dry: bool
    device: torch.device
    layers: int
    hidden: int
    heads: int
    ffn: int
    batch: int            # pre-training sequences per step
    seq: int
    warmup: int           # untimed steps (compilation happens there)
    steps: int            # timed steps at most ...
    step_seconds: float   # ... or this long
    workers: int
    optimizer: str
    precisions: tuple[str, ...]
    compile_backend: str
    dist_batch: int       # per rank
    dist_steps: int
    ft_batch: int
    ft_steps: int
    ft_train: int
    ft_dev: int
    ft_seq: int
    lat_batches: tuple[int, ...]
    lat_seq: int
    lat_warmup: int
    lat_runs: int
    budget: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> "Plan":
        common = dict(optimizer=args.optimizer, precisions=("bf16", "fp16"),
                      lat_batches=(1, 32), budget=args.budget)
        if args.dry:
            return cls(dry=True, device=torch.device("cpu"), layers=2, hidden=64, heads=2,
                       ffn=128, batch=4, seq=32, warmup=1, steps=2, step_seconds=30.0,
                       workers=0, compile_backend="eager", dist_batch=2, dist_steps=3,
                       ft_batch=8, ft_steps=3, ft_train=32, ft_dev=16, ft_seq=32,
                       lat_seq=32, lat_warmup=1, lat_runs=3, **common)
        return cls(dry=False, device=torch.device("cuda", 0), layers=8, hidden=768, heads=12,
                   ffn=3072, batch=args.batch, seq=args.seq, warmup=5, steps=args.steps,
                   step_seconds=10.0, workers=4, compile_backend="inductor", dist_batch=32,
                   dist_steps=20, ft_batch=32, ft_steps=40, ft_train=512, ft_dev=128, ft_seq=128,
                   lat_seq=128, lat_warmup=10, lat_runs=50, **common)

    def cap(self, section: str) -> float:
        return self.budget * SHARES[section]


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def train_flops(arch: Arch, sequences: int, seq: int, masked: int, vocab: int) -> float:
    """Training FLOPs of one MLM step: 3 x the encoder's forward FLOPs (forward + backward) and
    the MLM head (transform d x d, decoder d x vocab) on the masked rows only."""
    head = 2 * (arch.hidden * arch.hidden + arch.hidden * vocab)
    return 3.0 * (arch.flops(seq) * sequences + head * masked)


# ---- what the sections share -----------------------------------------------------------------------
class Context:
    """The run's supernet, data and task files, made once, when a case first needs them."""

    def __init__(self, plan: Plan, out: Path, work: Path, peak: float | None, seed: int):
        self.plan, self.out, self.work, self.peak = plan, out, work, peak
        self.logfile = out / "bench_gpu.log"
        self.config = AutoTinyBertConfig(vocab_size=30522, hidden_size=plan.hidden,
                                         num_hidden_layers=plan.layers,
                                         num_attention_heads=plan.heads,
                                         intermediate_size=plan.ffn, attention_scheme="mlm")
        self.full = arch_of_config(self.config)
        space = SearchSpace.for_supernet(self.config, "mlm")
        # One sub-arch of the pre-training space, drawn as a step draws it; a smaller one than
        # the full arch (a draw equal to the full arch would measure nothing new).
        rng = random.Random(seed)
        self.sub = next(a for a in iter(lambda: space.sample(rng), None) if a != self.full)
        self._dataset = None

    @cached_property
    def supernet_dir(self) -> Path:
        torch.manual_seed(0)
        return save_model(AutoTinyBertForMaskedLM(self.config), self.work / "supernet",
                          bundled_vocab_path())

    @cached_property
    def vocab(self) -> Vocab:
        return Vocab.of_model(self.supernet_dir)

    def _random_shards(self, name: str, sequences: int, seq: int) -> Path:
        """JSON shards (the original's format) of `sequences` random wordpieces sequences, each
        exactly `seq` long: throughput does not depend on the text, and static shapes spare
        torch.compile recompilations."""
        out = self.work / name
        out.mkdir(parents=True, exist_ok=True)
        words = [t for t in self.vocab.tokens
                 if t not in self.vocab.specials and not t.startswith("[")]
        rng = np.random.default_rng(0)
        ids = rng.integers(0, len(words), size=(sequences, seq))
        shards = [[] for _ in range(2)]
        for i, row in enumerate(ids):
            shards[i % 2].append(json.dumps({"tokens": [words[j] for j in row]}))
        for i, lines in enumerate(shards):
            (out / JSON_SHARD.format(i)).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return out

    @cached_property
    def pretrain_data(self) -> Path:
        p = self.plan
        return self._random_shards("pretrain_data", (p.warmup + p.steps) * p.batch, p.seq)

    def pretrain_dataset(self, cfg: PretrainConfig):
        """(dataset, masking collator) of the pre-training data, read once (the same for every
        case: only the precision differs between their configs)."""
        if self._dataset is None:
            self._dataset = build_data(cfg, self.vocab)
        return self._dataset

    @cached_property
    def dist_data(self) -> Path:
        p = self.plan
        return self._random_shards("torchrun_data", p.dist_steps * 2 * p.dist_batch, p.seq)

    @cached_property
    def books(self) -> Path:
        import make_book_tasks

        out = self.work / "books"
        with open(self.logfile, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
            make_book_tasks.main(["--output_dir", str(out), "--train_examples",
                                  str(self.plan.ft_train), "--dev_examples",
                                  str(self.plan.ft_dev)])
        return out


@contextlib.contextmanager
def library_log(logfile: Path, lines: list[str] | None = None) -> Iterator[None]:
    """The library's INFO lines go to `logfile` (and into `lines`), not to the console."""
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if lines is not None:
                lines.append(record.getMessage())

    lib = logging.getLogger("superbert")
    handlers = [logging.FileHandler(logfile, encoding="utf-8"), Collect()]
    handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = lib.level, lib.propagate
    lib.setLevel(logging.INFO)
    lib.propagate = False
    for h in handlers:
        lib.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            lib.removeHandler(h)
            h.close()
        lib.setLevel(saved[0])
        lib.propagate = saved[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- 1. pre-training throughput ----------------------------------------------------------------------
class _Enough(Exception):
    """The timed window is long enough: stop the loop."""


@dataclass
class Meter:
    warmup: int
    seconds: float
    start: float = field(default_factory=time.perf_counter)
    warmup_s: float = 0.0
    t0: float | None = None
    last: float = 0.0
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    step_times: list[float] = field(default_factory=list)


class TimedTrainer(Trainer):
    """The project's Trainer; each step synchronised and timed after the warm-up steps (data
    loading, scheduler and the loop's bookkeeping between steps included)."""

    meter: Meter
    vocab_size: int

    def train_step(self, batches, archs):
        terms, counts, arch_losses = super().train_step(batches, archs)
        sync(self.device)
        m, now = self.meter, time.perf_counter()
        if self.state.global_step + 1 <= m.warmup:
            m.warmup_s, m.t0 = now - m.start, now
        else:
            m.steps += 1
            m.tokens += counts.tokens
            B, T = batches[0]["input_ids"].shape
            m.flops += sum(train_flops(a, B * len(batches), T, counts.masked, self.vocab_size)
                           for a in archs)
            m.step_times.append(now - m.last)
            if now - m.t0 >= m.seconds and m.steps >= 3:
                m.last = now
                raise _Enough
        m.last = now
        return terms, counts, arch_losses


def pretrain_case(ctx: Context, arch: Arch, precision: str, compiled: bool) -> list[Row]:
    p = ctx.plan
    cfg = PretrainConfig(pregenerated_data=str(ctx.pretrain_data),
                         student_model=str(ctx.supernet_dir), cache_dir=str(ctx.work / "runs"),
                         mlm_loss=True, further_train=True, do_lower_case=True, epochs=1,
                         train_batch_size=p.batch, max_seq_length=p.seq, masked_lm_prob=0.15,
                         max_steps=p.warmup + p.steps, logging_steps=10 ** 6,
                         warmup_proportion=0.1, optimizer=p.optimizer, num_workers=p.workers,
                         no_progress=True, no_cuda=p.device.type != "cuda",
                         bf16=precision == "bf16", fp16=precision == "fp16")
    with library_log(ctx.logfile):
        dataset, collator = ctx.pretrain_dataset(cfg)
        torch.manual_seed(0)
        model = AutoTinyBertForMaskedLM(ctx.config)
        if compiled:
            torch._dynamo.reset()
            model.bert.compile(backend=p.compile_backend)
        if p.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(p.device)
        trainer = TimedTrainer(cfg, DistEnv(device=p.device), model, dataset, collator, None,
                               arch, ctx.vocab.file, run_dir=None, tb_dir=None)
        trainer.vocab_size = ctx.config.vocab_size
        trainer.meter = m = Meter(p.warmup, p.step_seconds)
        try:
            trainer.train()
        except _Enough:
            pass
    if not m.steps:
        raise RuntimeError("no timed step")
    elapsed = m.last - m.t0
    mfu = m.flops / elapsed / (ctx.peak * 1e12) if ctx.peak else None
    mem = (f"; peak memory {torch.cuda.max_memory_allocated(p.device) / 2 ** 30:.1f} GiB"
           if p.device.type == "cuda" else "")
    how = ("compile " + ("(dynamo only, backend=eager: --dry)" if p.compile_backend == "eager"
                         else "(inductor)")) if compiled else "eager"
    note = (f"{m.steps} steps of {p.batch}x{p.seq} after {p.warmup} warm-up ({m.warmup_s:.1f} s"
            f"{', compile included' if compiled else ''}); median step "
            f"{1000 * statistics.median(m.step_times):.1f} ms; {p.optimizer}{mem}")
    name = f"{'full' if arch == ctx.full else 'sub'} {arch.short()}, {precision}, {how}"
    return [Row("pretrain", name, m.tokens / elapsed, "tok/s", mfu, note=note)]


def pretrain_cases(ctx: Context) -> list[Case]:
    p = ctx.plan
    cases = []
    for compiled in (False, True):  # every eager figure first: compilation may eat the cap
        for precision in p.precisions:
            for arch in (ctx.full, ctx.sub):
                name = (f"{'full' if arch == ctx.full else 'sub'} {arch.short()}, {precision}, "
                        f"{'compile' if compiled else 'eager'}")
                skip = None
                if precision == "fp16" and p.device.type != "cuda":
                    skip = "fp16 autocast + GradScaler need CUDA: not run in --dry (CPU)"
                cases.append(Case("pretrain", name, skip=skip,
                                  run=lambda a=arch, pr=precision, c=compiled:
                                  pretrain_case(ctx, a, pr, c),
                                  cap=150.0 if compiled else 45.0, needs=15.0 if compiled else 3.0))
    return cases


# ---- 2. torchrun: pre_training.py as 2 ranks ---------------------------------------------------------
def _first_error(text: str) -> str:
    """The line of a failed run's output that says what went wrong."""
    for pattern in (r"^.*Duplicate GPU.*$", r"^error: .*$", r"^\S*(?:Error|Exception)\b.*$"):
        found = re.search(pattern, text, flags=re.MULTILINE)
        if found:
            return found.group(0).strip()[:300]
    tail = [line for line in text.splitlines() if line.strip()]
    return tail[-1].strip()[:300] if tail else "no output"


def _train_log_steps_per_s(cache: Path, steps: int, tokens_per_step: int) -> tuple[float, str]:
    """Steps/s of the run's train_log.jsonl (one record per step: its tokens/s), median over the
    steps after the first two; raises if the run did not do what it should."""
    logs = list(cache.glob("output/superbert/checkpoints/*/train_log.jsonl"))
    if len(logs) != 1:
        raise RuntimeError(f"expected one train_log.jsonl under {cache}, found {len(logs)}")
    records = [json.loads(l) for l in logs[0].read_text().splitlines() if l.strip()]
    if [r["step"] for r in records] != list(range(1, steps + 1)):
        raise RuntimeError(f"train_log.jsonl holds steps {[r['step'] for r in records]}, "
                           f"expected 1..{steps}")
    if not all(math.isfinite(r["loss"]) for r in records):
        raise RuntimeError("a non-finite loss in train_log.jsonl")
    if not (logs[0].parent / f"step_{steps}").is_dir():
        raise RuntimeError(f"no checkpoint step_{steps} beside {logs[0]}")
    seconds = [tokens_per_step / r["tokens_per_s"] for r in records[2:] or records]
    return 1.0 / statistics.median(seconds), f"loss {records[0]['loss']:.2f} -> {records[-1]['loss']:.2f}"


def torchrun_command(ctx: Context, backend: str) -> tuple[list[str], Path, dict[str, str]]:
    """(command, log file, environment) of pre_training.py as 2 torchrun ranks with `backend`."""
    p = ctx.plan
    cuda = p.device.type == "cuda"
    flags = ["--pregenerated_data", str(ctx.dist_data), "--student_model", str(ctx.supernet_dir),
             "--cache_dir", str(ctx.work / f"torchrun_{backend}"), "--mlm_loss", "--scratch",
             "--do_lower_case", "--epochs", "1", "--train_batch_size", str(p.dist_batch),
             "--max_seq_length", str(p.seq), "--masked_lm_prob", "0.15",
             "--max_steps", str(p.dist_steps), "--logging_steps", "1",
             "--warmup_proportion", "0.1", "--num_workers", str(min(p.workers, 2)),
             "--no_progress", "--overwrite_output_dir"]
    flags += ["--bf16"] if cuda else ["--no_cuda", "--threads", "1"]
    env = {"OMP_NUM_THREADS": "1", "NCCL_DEBUG": "WARN"}
    if cuda and backend == "gloo":
        env["BENCH_DIST_BACKEND"] = "gloo"  # pre_training.py would join with NCCL on a GPU
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(ROOT / "bench" / "_one_gpu_rank.py"), *flags]
    return cmd, ctx.out / f"torchrun_{backend}.log", env


def torchrun_case(ctx: Context, cap: float, early: Launched | None = None) -> list[Row]:
    """NCCL, then gloo if NCCL did not run (on the CPU: gloo only). `early`: the gloo run,
    already started (--dry starts it beside the pretrain section: its start-up is most of it)."""
    p = ctx.plan
    deadline = time.perf_counter() + cap
    cuda = p.device.type == "cuda"
    gpus = torch.cuda.device_count() if cuda else 0
    where = ("both ranks on cuda:0 (one GPU)" if gpus == 1 else
             f"ranks on cuda:0 and cuda:1 ({gpus} GPUs)" if gpus else "CPU")
    tokens_per_step = 2 * p.dist_batch * p.seq
    rows: list[Row] = []
    attempts = ["nccl", "gloo"] if cuda else ["gloo"]
    for i, backend in enumerate(attempts):
        left = deadline - time.perf_counter()
        # NCCL may hang rather than refuse: it gets half the time, gloo keeps the rest.
        # (15 s are kept for ending a run that overstays.)
        timeout = (left / 2 if i == 0 and len(attempts) > 1 else left) - 15
        cmd, run_log, env = torchrun_command(ctx, backend)
        launched = early if early is not None and backend == "gloo" else Launched(cmd, run_log,
                                                                                   env)
        rc, seconds = launched.wait(timeout)
        case = f"pre_training.py, 2 ranks, {backend}"
        setting = (f"{where}; {p.dist_steps} steps of 2x{p.dist_batch}x{p.seq}"
                   f"{', bf16' if cuda else ''}; {seconds:.0f} s wall incl. start-up"
                   f"{' (started beside the pretrain section)' if launched is early else ''}")
        if rc == 0:
            try:
                rate, losses = _train_log_steps_per_s(ctx.work / f"torchrun_{backend}",
                                                      p.dist_steps, tokens_per_step)
            except Exception as err:
                rows.append(Row("torchrun", case, status="failed",
                                note=f"exit 0 but {error_line(err)}"))
            else:
                fallback = " (gloo: NCCL did not run, see the row above)" if i else ""
                rows.append(Row("torchrun", case, rate, "steps/s",
                                note=f"passed{fallback}: {setting}; {losses}"))
            return rows
        text = run_log.read_text(encoding="utf-8", errors="replace")
        why = (f"timed out after {seconds:.0f} s" if rc is None else
               f"exit {rc}: {_first_error(text)}")
        if backend == "nccl" and "duplicate gpu" in text.lower():
            rows.append(Row("torchrun", case, status="skipped",
                            note=f"NCCL refused two ranks on one GPU ({why}); gloo below"))
        else:
            rows.append(Row("torchrun", case, status="timeout" if rc is None else "failed",
                            note=f"{why} (log: {run_log.name})"))
    return rows


# ---- 3. the evaluator's fine-tuning ----------------------------------------------------------------
JOB_LINE = re.compile(r"seed (\d+): best .* \((\d+) steps, ([\d.]+) s\)")


def finetune_case(ctx: Context, fp16: bool) -> list[Row]:
    import superbert_run_en_classifier as classifier

    p = ctx.plan
    argv = ["--model", str(ctx.supernet_dir), "--data_dir", str(ctx.books / "SST-2"),
            "--task_name", "sst-2", "--output_dir",
            str(ctx.work / f"finetune_{'fp16' if fp16 else 'fp32'}"), "--do_lower_case",
            "--max_seq_length", str(p.ft_seq), "--train_batch_size", str(p.ft_batch),
            "--eval_batch_size", "64", "--max_steps", str(p.ft_steps),
            "--eval_step", str(p.ft_steps), "--max_eval_examples", str(p.ft_dev),
            "--learning_rate", "1e-4", "--seed", "1 2", "--no_progress"]
    argv += ["--fp16"] if fp16 else []
    argv += [] if p.device.type == "cuda" else ["--no_cuda"]
    lines: list[str] = []
    with library_log(ctx.logfile, lines):
        classifier.main(argv)
    jobs = {int(m.group(1)): (int(m.group(2)), float(m.group(3)))
            for m in map(JOB_LINE.search, lines) if m}
    if 2 not in jobs:
        raise RuntimeError(f"no timing line for the second seed in the evaluator's log "
                           f"({len(lines)} lines)")
    steps, seconds = jobs[2]
    cold = f"; the first seed took {jobs[1][1]:.1f} s" if 1 in jobs else ""
    note = (f"full arch on sst-2 (book task), {steps} steps of {p.ft_batch}x{p.ft_seq} + one dev "
            f"pass of {p.ft_dev}, second seed (warm){cold}")
    name = f"superbert_run_en_classifier.py, {'--fp16' if fp16 else 'fp32'}"
    return [Row("finetune", name, steps * p.ft_batch / seconds, "examples/s", note=note)]


def finetune_cases(ctx: Context) -> list[Case]:
    cuda = ctx.plan.device.type == "cuda"
    return [Case("finetune", "superbert_run_en_classifier.py, fp32",
                 run=lambda: finetune_case(ctx, False), needs=5.0),
            Case("finetune", "superbert_run_en_classifier.py, --fp16",
                 run=lambda: finetune_case(ctx, True), needs=5.0,
                 skip=None if cuda else "--fp16 needs CUDA (the evaluator runs float32 on CPU): "
                                        "not run in --dry")]


# ---- 4. the latency protocol on the device ---------------------------------------------------------
class DeviceTimer(Timer):
    """The latency protocol's Timer with the model and inputs on `device` and a synchronize
    after every forward, so each timed forward is the GPU's time, not the launch's."""

    def __init__(self, config, scheme, protocol: TimingProtocol, device: torch.device):
        super().__init__(config, scheme, protocol)
        self.device = device
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)

    def build(self, arch: Arch):
        return super().build(arch).to(self.device)

    def forward(self, model) -> None:
        super().forward(model)
        sync(self.device)


def latency_case(ctx: Context, batch: int) -> list[Row]:
    p = ctx.plan
    protocol = TimingProtocol(threads=torch.get_num_threads(), batch_size=batch, seq_len=p.lat_seq,
                              warmup=p.lat_warmup, infer_cnt=p.lat_runs)
    # BERT-base, every speedup's reference; the dry run's CPU would take minutes on it.
    reference = ctx.full if p.dry else BERT_BASE
    with library_log(ctx.logfile), DeviceTimer(ctx.config, "mlm", protocol, p.device) as timer:
        sp = time_against_reference(timer, [ctx.full, ctx.sub], reference)
    where = "CPU (--dry)" if p.dry else "GPU"
    how = f"batch {batch}x{p.lat_seq}, fp32 eager on the {where}, median of {p.lat_runs}"
    rows = [Row("latency", f"batch {batch}: reference {reference.short()}"
                f"{'' if p.dry else ' (BERT-base)'}", sp.reference_ms, "ms", note=how)]
    for arch, ms, speedup in zip(sp.archs, sp.arch_ms, sp.speedups):
        kind = "full" if arch == ctx.full else "sub"
        rows.append(Row("latency", f"batch {batch}: {kind} {arch.short()}", ms, "ms",
                        note=f"{speedup:.2f}x the reference; {how}"))
    return rows


# ---- main ------------------------------------------------------------------------------------------
def device_line(plan: Plan) -> str:
    if plan.dry:
        return f"CPU ({platform.processor() or platform.machine()}), --dry"
    props = torch.cuda.get_device_properties(0)
    try:
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception:  # a build without NCCL
        nccl = "none"
    return (f"{props.name} ({props.total_memory / 2 ** 30:.0f} GiB, sm_{props.major}{props.minor}),"
            f" {torch.cuda.device_count()} visible; CUDA {torch.version.cuda}, NCCL {nccl}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_gpu_out"),
                   help="folder for bench_gpu.md, bench_gpu.json and the logs")
    p.add_argument("--dry", action="store_true",
                   help="CPU, tiny dims, 2-3 steps: checks that every section still runs")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all sections together, shared as "
                        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in SHARES.items())
                        + " (default 450 on a GPU, 400 with --dry)")
    p.add_argument("--batch", type=int, default=64, help="pre-training sequences per step")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed pre-training steps at most "
                                                         "(or 10 s)")
    p.add_argument("--optimizer", default="bertadam", choices=["bertadam", "adamw"],
                   help="pre-training optimizer (pre_training.py's default: bertadam)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak, where its name is not in the table")
    p.add_argument("--seed", type=int, default=0, help="draws the sub-arch")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the supernet, data and runs (default: a temporary one)")
    return p


def write_report(out: Path, plan: Plan, header: list[str], rows: list[Row], seconds: float,
                 extra: dict) -> str:
    """bench_gpu.md and bench_gpu.json as they stand (rewritten after every row, so a run cut
    short still leaves its figures); returns the summary line."""
    bad = sum(r.status in ("failed", "timeout") for r in rows)
    summary = (f"{len(rows)} rows: {sum(r.status == 'ok' for r in rows)} ok, "
               f"{sum(r.status == 'skipped' for r in rows)} skipped, {bad} failed or timed "
               f"out; {seconds:.0f} s in all")
    md = ["# bench_gpu.py" + (" --dry" if plan.dry else ""), "", *[f"- {h}" for h in header],
          "", table(rows), "", summary, "",
          ("MFU: training FLOPs (3 x encoder forward FLOPs + the MLM head on the masked rows) "
           "per second over the peak. Tracebacks and the scripts' output: bench_gpu.log, "
           "torchrun_*.log."), ""]
    (out / "bench_gpu.md").write_text("\n".join(md), encoding="utf-8")
    plan_record = {k: (str(v) if isinstance(v, torch.device) else v)
                   for k, v in asdict(plan).items()}
    (out / "bench_gpu.json").write_text(json.dumps(
        {**extra, "dry": plan.dry, "header": header, "plan": plan_record,
         "columns": list(COLUMNS), "rows": [asdict(r) for r in rows], "seconds": seconds},
        indent=1), encoding="utf-8")
    return summary


def section_cases(ctx: Context, section: str, cap: float,
                  early: Launched | None = None) -> list[Case]:
    if section == "pretrain":
        return pretrain_cases(ctx)
    if section == "torchrun":
        return [Case("torchrun", "pre_training.py, 2 ranks", needs=0.0 if early else 20.0,
                     run=lambda: torchrun_case(ctx, cap - 1.0, early))]
    if section == "finetune":
        return finetune_cases(ctx)
    return [Case("latency", f"batch {b}", run=lambda b=b: latency_case(ctx, b), needs=2.0)
            for b in ctx.plan.lat_batches]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; `--dry` runs the same code on the CPU with tiny dims",
              file=sys.stderr)
        return 2
    if args.budget is None:
        args.budget = 400.0 if args.dry else 450.0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.dry:
        torch.set_num_threads(1)  # tiny dims: one thread is fastest, and fair on a busy machine
    t_start = time.perf_counter()
    plan = Plan.of(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.log").write_text("", encoding="utf-8")
    peak = args.peak_tflops
    if peak is None and not plan.dry:
        peak = peak_tflops(torch.cuda.get_device_name(0))
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="bench_gpu_")))
        ctx = Context(plan, out, work, peak, args.seed)
        peak_text = f"{peak:g} TFLOPs" if peak else "n/a (unknown device: --peak_tflops)"
        header = [f"device: {device_line(plan)}",
                  (f"torch {torch.__version__}, python {platform.python_version()}; "
                   f"{datetime.datetime.now().isoformat(timespec='seconds')}"),
                  (f"supernet {ctx.full.short()} (vocab 30522, MLM scheme); sub-arch "
                   f"{ctx.sub.short()} (drawn from its search space, --seed {args.seed})"),
                  f"peak dense bf16/fp16: {peak_text}",
                  f"budget {plan.budget:.0f} s: " + ", ".join(
                      f"{s} {plan.cap(s):.0f} s" for s in SECTIONS if s in args.sections)]
        print("\n".join(header), flush=True)
        extra = {"device": device_line(plan), "torch": torch.__version__, "peak_tflops": peak,
                 "full_arch": ctx.full.short(), "sub_arch": ctx.sub.short()}

        def report(row: Row) -> None:
            rows.append(row)
            mfu = f", MFU {row.mfu_text()}" if row.mfu is not None else ""
            print(f"[{row.section}] {row.case}: {row.status} {row.result()}{mfu} -- {row.note}",
                  flush=True)
            write_report(out, plan, header, rows, time.perf_counter() - t_start, extra)

        early = None
        if plan.dry and "torchrun" in args.sections:
            # The CPU run is mostly its processes' start-up: begun now, it overlaps the sections
            # before it (the GPU run keeps every section to itself, for its timings). A failure
            # to start it here is left to the torchrun case to meet again and report.
            try:
                early = Launched(*torchrun_command(ctx, "gloo"))
                stack.callback(early.stop)
            except Exception:
                with open(out / "bench_gpu.log", "a", encoding="utf-8") as fh:
                    fh.write(f"--- starting torchrun early failed:\n{traceback.format_exc()}\n")
        for section in SECTIONS:
            if section in args.sections:
                cap = plan.cap(section)
                run_cases(section_cases(ctx, section, cap, early), cap, out / "bench_gpu.log",
                          report)
    summary = write_report(out, plan, header, rows, time.perf_counter() - t_start, extra)
    print(f"\n{table(rows)}\n\n{summary}\nwritten: {out / 'bench_gpu.md'}, "
          f"{out / 'bench_gpu.json'}")
    return 1 if any(r.status in ("failed", "timeout") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
