"""The CPU timing protocol: what is timed, how, and on which machine.

PyTorch on CPU, 1 intra-op thread, batch 1 x 128 tokens (all token id 9333, as the original), a
warm-up forward, then `infer_cnt` timed forwards under `torch.inference_mode()`; the median
(robust to scheduler noise; `min` with `statistic="min"`, steadier on a machine whose speed
wanders) is what the dataset records, the mean is logged beside it. The default subject is the
extracted dense sub-model with random weights (latency depends only on the shapes): what is
deployed. The original timed the sliced supernet (`TimingProtocol.subject = "supernet"`).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..arch import Arch, Scheme, arch_of_config
from ..errors import UserError
from ..modeling import AutoTinyBertModel, sub_config

# BERT-base, the reference of every speedup (12 layers, 768 hidden, 12 heads, qkv 768, FFN 3072).
BERT_BASE = Arch(layers=12, hidden=768, heads=12, qkv=768, ffn=3072)
TIMING_TOKEN_ID = 9333


@dataclass(frozen=True)
class TimingProtocol:
    threads: int = 1
    batch_size: int = 1
    seq_len: int = 128
    warmup: int = 1
    infer_cnt: int = 10
    subject: str = "extracted"  # "extracted" dense sub-model, or "supernet" (sliced, original)
    # What a dataset line records: "median" of the timed runs (the protocol's default), or "min",
    # the most repeatable on a machine whose speed wanders (interference only adds time).
    statistic: str = "median"
    # "wall": perf_counter, what a user waits (the original's time.time()). "cpu": the process's
    # CPU time, which with 1 thread equals wall time on an idle machine but ignores time the
    # scheduler gives to other processes: the robust choice on a shared machine.
    clock: str = "wall"
    # Drift correction for shared machines: a fixed reference arch is timed after every arch and
    # each latency is scaled by (reference at the start / reference now, averaged over the last
    # few), so slow changes in machine load do not leak into the dataset.
    drift_ref: bool = False

    def __post_init__(self) -> None:
        for name in ("threads", "batch_size", "seq_len", "infer_cnt"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UserError("the number of warm-up runs cannot be negative")
        if self.subject not in ("extracted", "supernet"):
            raise UserError(f"unknown timing subject {self.subject!r}")
        if self.statistic not in ("median", "min"):
            raise UserError(f"--statistic must be median or min, got {self.statistic!r}")
        if self.clock not in ("wall", "cpu"):
            raise UserError(f"--clock must be wall or cpu, got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise UserError("--clock cpu measures the summed CPU time of all threads; it is "
                            "only a latency with --threads 1")

    @classmethod
    def from_record(cls, saved: dict[str, Any] | None) -> "TimingProtocol":
        """The protocol a sidecar / time.pt recorded (unknown keys ignored, missing ones default)."""
        return cls(**{k: v for k, v in (saved or {}).items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Timing:
    """One arch timed: statistics of the timed runs, in ms; `ms` is the protocol's statistic."""

    arch: Arch
    median_ms: float
    mean_ms: float
    runs: int
    min_ms: float = float("nan")
    statistic: str = "median"

    @property
    def ms(self) -> float:
        return self.min_ms if self.statistic == "min" else self.median_ms


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:  # only allowed before any inter-op work started; harmless to skip afterwards
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


class Timer:
    """Times archs of one supernet config under a protocol (model built per arch, random weights)."""

    def __init__(self, config: Any, scheme: str | Scheme, protocol: TimingProtocol = TimingProtocol()):
        self.config = config
        self.scheme = Scheme.parse(scheme)
        self.protocol = protocol
        set_threads(protocol.threads)
        vocab = int(config.vocab_size)
        token = TIMING_TOKEN_ID if TIMING_TOKEN_ID < vocab else vocab - 1
        if protocol.seq_len > int(config.max_position_embeddings):
            raise UserError(f"--max_seq_length {protocol.seq_len} exceeds the model's "
                            f"max_position_embeddings {config.max_position_embeddings}")
        self.input_ids = torch.full((protocol.batch_size, protocol.seq_len), token, dtype=torch.long)
        self.attention_mask = torch.ones_like(self.input_ids)
        self._supernet = None
        self._supernet_arch: Arch | None = None

    def _supernet_for(self, arch: Arch) -> AutoTinyBertModel:
        """The sliced supernet (original protocol), grown to hold `arch` (e.g. BERT-base)."""
        cfg = self.config
        need = Arch(max(arch.layers, cfg.num_hidden_layers), max(arch.hidden, cfg.hidden_size),
                    cfg.num_attention_heads, max(arch.qkv, cfg.qkv_size),
                    max(arch.ffn, cfg.intermediate_size))
        if self._supernet is None or self._supernet_arch != need:
            full = sub_config(cfg, need)
            full.attention_scheme = self.scheme
            self._supernet = AutoTinyBertModel(full).eval()
            self._supernet_arch = need
        return self._supernet

    def build(self, arch: Arch) -> nn.Module:
        """The model whose forward is timed, already set to `arch`."""
        if self.protocol.subject == "supernet":
            model = self._supernet_for(arch)
            model.set_sample_config(arch)
            return model
        cfg = sub_config(self.config, arch)
        cfg.fit_size = None  # dense_fit is a training-time projection, not deployed
        return AutoTinyBertModel(cfg).eval()

    def forward(self, model: nn.Module) -> None:
        out = model(self.input_ids, attention_mask=self.attention_mask)
        # The original's KD timing path ended in dense_fit (projection to the teacher width).
        if self.protocol.subject == "supernet" and getattr(model, "dense_fit", None) is not None:
            model.dense_fit(out.last_hidden_state)

    def time(self, arch: Arch) -> Timing:
        return self.time_model(self.build(arch), arch)

    def time_reference(self, arch: Arch, extra_warmup: int = 3) -> Timing:
        """Time a reference arch with extra warm-up: it is often the process's first model, whose
        first forwards (kernel selection, allocator growth) would inflate every speedup."""
        return self.time_model(self.build(arch), arch,
                               warmup=self.protocol.warmup + extra_warmup)

    def time_model(self, model: nn.Module, arch: Arch, runs: int | None = None,
                   warmup: int | None = None) -> Timing:
        clock = time.perf_counter if self.protocol.clock == "wall" else time.process_time
        times = []
        with torch.inference_mode():
            for _ in range(self.protocol.warmup if warmup is None else warmup):
                self.forward(model)
            for _ in range(runs or self.protocol.infer_cnt):
                start = clock()
                self.forward(model)
                times.append((clock() - start) * 1000.0)
        return Timing(arch, float(np.median(times)), float(np.mean(times)), len(times),
                      float(np.min(times)), self.protocol.statistic)


# ---- speedups, measured -------------------------------------------------------------------------
@dataclass(frozen=True)
class Speedups:
    """`archs` and a reference arch timed on one machine: latencies (ms) and speedups."""

    reference: Arch
    reference_ms: float
    archs: tuple[Arch, ...]
    arch_ms: tuple[float, ...]

    @property
    def speedups(self) -> tuple[float, ...]:
        return tuple(self.reference_ms / ms for ms in self.arch_ms)


def time_against_reference(timer: Timer, archs: Sequence[Arch], reference: Arch,
                           rounds: int = 1, progress: bool = False) -> Speedups:
    """The one way a speedup is measured: time `reference`, then `rounds` rounds of every arch
    each followed by the reference again, all under `timer`'s protocol.

    The first reference timing gets extra warm-up (`Timer.time_reference`); the reference
    brackets every round, so a slow drift of the machine's speed affects both sides alike. Each
    latency is the median of its timings (with one round the reference's is the mean of the
    timings before and after the archs).
    """
    if rounds < 1:
        raise UserError(f"at least one timing round is needed, got {rounds}")
    archs = tuple(archs)
    ref = [timer.time_reference(reference).ms]
    timed: list[list[float]] = [[] for _ in archs]
    bar = tqdm(total=rounds * len(archs), desc="measuring", unit="arch", disable=not progress)
    for _ in range(rounds):
        for i, arch in enumerate(archs):
            timed[i].append(timer.time(arch).ms)
            bar.update()
        ref.append(timer.time(reference).ms)
    bar.close()
    return Speedups(reference, float(np.median(ref)), archs,
                    tuple(float(np.median(t)) for t in timed))


# ---- the machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    backends = []
    if torch.backends.mkldnn.is_available():
        backends.append("oneDNN")
    if torch.backends.mkl.is_available():
        backends.append("MKL")
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, "backend": "pytorch-cpu" + (f" ({', '.join(backends)})" if backends else ""),
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "platform": platform.platform()}


# ---- drift correction ---------------------------------------------------------------------------
# A mid-size arch (about a tenth of BERT-base) timed between archs for drift correction.
DRIFT_REF = Arch(layers=4, hidden=384, heads=12, qkv=384, ffn=1536)


class Drift:
    """Running reference latency: the mean of the last `window` reference timings."""

    def __init__(self, timer: Timer, window: int = 8, runs: int = 3):
        self.timer, self.window, self.runs, self.recent = timer, window, runs, []
        # The sliced supernet is one shared model: its reference is its own full arch.
        self.arch = (arch_of_config(timer.config) if timer.protocol.subject == "supernet"
                     else DRIFT_REF)
        self.model = timer.build(self.arch)  # built once: only its timing is repeated
        timer.time_model(self.model, self.arch, runs=1, warmup=1)

    def now(self) -> float:
        model = self.timer.build(self.arch) if self.timer.protocol.subject == "supernet" else self.model
        return self.timer.time_model(model, self.arch, runs=self.runs, warmup=0).ms

    def update(self) -> float:
        self.recent = (self.recent + [self.now()])[-self.window:]
        return float(np.mean(self.recent))
