"""The CPU timing protocol: what is timed, how, and on which machine.

PyTorch on CPU, 1 intra-op thread, batch 1 x 128 tokens (all token id 9333, as the original), a
warm-up forward, then `infer_cnt` timed forwards under `torch.inference_mode()`; the median
(robust to scheduler noise; `min` with `statistic="min"`, steadier on a machine whose speed
wanders) is what the dataset records, the mean is logged beside it. The default subject is the
extracted dense sub-model with random weights (latency depends only on the shapes): what is
deployed. The original timed the sliced supernet (`TimingProtocol.subject = "supernet"`).

`TimingProtocol.backend` says which runtime runs the forward: "torch" (eager PyTorch), or
"onnxruntime" / "onnxruntime-int8" (the same model exported to ONNX, INT8 after ONNX Runtime's
dynamic quantiser, timed by `deploy.OnnxTimingBackend` under the same protocol). A dataset, and
the predictor fitted on it, hold one backend's latencies; `Timer` delegates to the backend.

A reference timing whose runs spread widely (mean / median above `NOISY_REFERENCE`) is taken
again once, and if it is still noisy a warning says so: every speedup divides by it.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from ..arch import Arch, Scheme, arch_of_config
from ..deploy import OnnxTimingBackend
from ..errors import UserError
from ..progress import Progress
from ..timing_protocol import TIMING_TOKEN_ID, Timing, TimingProtocol

if TYPE_CHECKING:
    from ..modeling import AutoTinyBertModel

# The model (and transformers under it) is imported where a model is built: fitting a predictor
# and searching with one import this package without building any, and transformers takes
# seconds to import (latency_predictor.py's whole run was ~60% import on a loaded 2-core VM).

logger = logging.getLogger(__name__)

# BERT-base, the reference of every speedup (12 layers, 768 hidden, 12 heads, qkv 768, FFN 3072).
BERT_BASE = Arch(layers=12, hidden=768, heads=12, qkv=768, ffn=3072)
# A reference timing whose mean exceeds its median by more than this is re-timed once.
NOISY_REFERENCE = 1.1
# The word-embedding rows of a graph exported for ONNX Runtime timing. Every timed token is the
# same id, so the table's size should not change the latency (L1/d128, L3/d256 and MiniLM-L6,
# 30522 vs 1024 rows, FP32 and INT8 alternating on a 2-core VM at load ~5: ratios 0.99-1.10,
# within that run's noise; bench/bench_ort_timing.py --parts export), but it is most of a small
# arch's graph (L3/d256: 37 MB vs 9 MB) and of its export and quantisation time (1.6 vs 0.7 s).
ONNX_TIMING_VOCAB = 1024


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:  # only allowed before any inter-op work started; harmless to skip afterwards
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


class RandomWeights:
    """Builds models to time with random weights drawn once: latency depends on the shapes, not
    the values, and drawing every model's weights afresh cost ~0.25 s per MiniLM-size model (a
    third of a 100-arch latency dataset). Matrices hold windows of one N(0, initializer_range)
    draw; LayerNorms are ones and zeros, as a fresh model's.

    Each tensor's window starts one value further than the last one's, so no two tensors are
    equal: the ONNX exporter merges equal initializers, and a graph whose layers all share one
    weight per shape is not the deployed graph. On MiniLM-L6 (L6/d384/f1536) such a graph held 12
    initializers instead of 103, ORT FP32 ran it 16% faster (the weights stayed in cache), and
    ORT's INT8 quantiser left every shared MatMul in FP32 (no MatMulInteger at all)."""

    # values drawn beyond the largest tensor: that many distinct windows, far more than a model
    # has tensors
    SPARE = 4096

    def __init__(self, std: float, seed: int = 0):
        self.std = std
        self.generator = torch.Generator().manual_seed(seed)
        self.values = torch.empty(0)
        self.drawn = 0  # tensors handed out: the next window's offset

    def _draw(self, n: int) -> torch.Tensor:
        if n + self.SPARE > self.values.numel():
            self.values = torch.randn(n + self.SPARE, generator=self.generator) * self.std
        start = self.drawn % (self.values.numel() - n + 1)
        self.drawn += 1
        return self.values[start:start + n]

    @torch.no_grad()
    def build(self, config: Any) -> AutoTinyBertModel:
        from ..modeling import AutoTinyBertModel
        try:  # transformers >= 5
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - transformers 4.x
            from transformers.modeling_utils import no_init_weights

        with no_init_weights():  # parameters left uninitialised; every one is filled below
            model = AutoTinyBertModel(config)
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, nn.LayerNorm):
                    param.fill_(1.0 if name == "weight" else 0.0)
                else:
                    param.copy_(self._draw(param.numel()).view_as(param))
        return model.eval()


class Timer:
    """Times archs of one supernet config under a protocol (model built per arch, random weights),
    with the protocol's backend. `close()` (or `with`) removes an ONNX backend's graphs."""

    def __init__(self, config: Any, scheme: str | Scheme, protocol: TimingProtocol = TimingProtocol()):
        # the ONNX backend exports and opens sessions: before anything else, so a missing
        # onnxruntime is one line
        self.onnx = OnnxTimingBackend(protocol.backend) if protocol.backend != "torch" else None
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
        self._weights = RandomWeights(float(getattr(config, "initializer_range", 0.02)))

    def _supernet_for(self, arch: Arch) -> AutoTinyBertModel:
        """The sliced supernet (original protocol), grown to hold `arch` (e.g. BERT-base)."""
        from ..modeling import sub_config

        cfg = self.config
        need = Arch(max(arch.layers, cfg.num_hidden_layers), max(arch.hidden, cfg.hidden_size),
                    cfg.num_attention_heads, max(arch.qkv, cfg.qkv_size),
                    max(arch.ffn, cfg.intermediate_size))
        if self._supernet is None or self._supernet_arch != need:
            full = sub_config(cfg, need)
            full.attention_scheme = self.scheme
            self._supernet = self._weights.build(full)
            self._supernet_arch = need
        return self._supernet

    def build(self, arch: Arch) -> nn.Module:
        """The model whose forward is timed, already set to `arch`."""
        from ..modeling import sub_config

        if self.protocol.subject == "supernet":
            model = self._supernet_for(arch)
            model.set_sample_config(arch)
            return model
        cfg = sub_config(self.config, arch)
        cfg.fit_size = None  # dense_fit is a training-time projection, not deployed
        if self.onnx is not None:
            cfg.vocab_size = min(int(cfg.vocab_size), ONNX_TIMING_VOCAB)
        return self._weights.build(cfg)

    def forward(self, model: nn.Module) -> None:
        out = model(self.input_ids, attention_mask=self.attention_mask)
        # The original's KD timing path ended in dense_fit (projection to the teacher width).
        if self.protocol.subject == "supernet" and getattr(model, "dense_fit", None) is not None:
            model.dense_fit(out.last_hidden_state)

    def info(self) -> dict[str, Any]:
        """What a sidecar records about the runtime: the backend, and for ONNX Runtime its
        version, providers, precision and opset."""
        if self.onnx is not None:
            return self.onnx.info()
        return {"backend": "torch", "torch_version": torch.__version__}

    def time(self, arch: Arch, runs: int | None = None, warmup: int | None = None) -> Timing:
        if self.onnx is not None:
            return self.onnx.time(arch, lambda: self.build(arch), self.protocol, runs=runs,
                                  warmup=warmup)
        return self.time_model(self.build(arch), arch, runs=runs, warmup=warmup)

    def time_reference(self, arch: Arch, extra_warmup: int = 3) -> Timing:
        """Time a reference arch with extra warm-up: it is often the process's first model, whose
        first forwards (kernel selection, allocator growth) would inflate every speedup. Runs
        that spread widely (mean / median > NOISY_REFERENCE) are timed again once; still noisy,
        a warning says so."""
        warmup = self.protocol.warmup + extra_warmup
        t = self.time(arch, warmup=warmup)
        if t.mean_ms / t.median_ms > NOISY_REFERENCE:
            first = t
            t = self.time(arch, warmup=warmup)
            if t.mean_ms / t.median_ms > NOISY_REFERENCE:
                logger.warning("the reference %s timed noisily twice (mean/median %.2f, then "
                               "%.2f): every speedup divides by it; time on a quieter machine "
                               "or with more --infer_cnt", arch.short(),
                               first.mean_ms / first.median_ms, t.mean_ms / t.median_ms)
        return t

    def close(self) -> None:
        if self.onnx is not None:
            self.onnx.close()

    def __enter__(self) -> "Timer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
    bar = Progress(rounds * len(archs), "measuring", unit="arch", enabled=progress, logger=logger)
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
        # built once: only its timing is repeated (the ONNX backend keeps its session itself)
        self.model = timer.build(self.arch) if timer.onnx is None else None
        self._time(runs=1, warmup=1)

    def _time(self, runs: int, warmup: int) -> Timing:
        if self.model is None:
            return self.timer.time(self.arch, runs=runs, warmup=warmup)
        model = self.timer.build(self.arch) if self.timer.protocol.subject == "supernet" else self.model
        return self.timer.time_model(model, self.arch, runs=runs, warmup=warmup)

    def now(self) -> float:
        return self._time(runs=self.runs, warmup=0).ms

    def update(self) -> float:
        self.recent = (self.recent + [self.now()])[-self.window:]
        return float(np.mean(self.recent))
