"""Latencies the summary times itself, never the predictor's: the chosen arch (and the others
shown) against the reference under the latency protocol of `superbert.latency`, in one process
(base and arch interleaved, so both see the same machine state), with the backend the search's
latencies were timed with; and the chosen arch as deployed, against the reference under each
backend."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..arch import Arch, Scheme
from ..deploy import read_sidecar
from ..errors import UserError
from ..latency import Speedups, Timer, time_against_reference
from ..results import read_results
from ..timing_protocol import TimingProtocol


def measure_latencies(config: Any, scheme: str | Scheme, archs: Sequence[Arch], base: Arch,
                      threads: int = 1, infer_cnt: int = 10, rounds: int = 3,
                      backend: str = "torch") -> Speedups:
    """`archs` and `base` timed under the latency protocol with `backend` by the one speedup
    measurement (`latency.time_against_reference`: the base brackets every round), in one
    process."""
    timer = Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt,
                                                 backend=backend))
    try:
        return time_against_reference(timer, archs, base, rounds)
    finally:
        if backend != "torch":
            timer.close()  # removes the exported graphs


def measure_speedup(config: Any, scheme: str | Scheme, arch: Arch, base: Arch, threads: int = 1,
                    infer_cnt: int = 10, rounds: int = 3) -> tuple[float, float]:
    """(base ms, arch ms) of one arch (`measure_latencies`)."""
    t = measure_latencies(config, scheme, [arch], base, threads, infer_cnt, rounds)
    return t.reference_ms, t.arch_ms[0]


DEPLOY_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
RUNTIME_OF_BACKEND = {"torch": "torch", "onnxruntime": "onnxruntime-fp32",
                      "onnxruntime-int8": "onnxruntime-int8"}
BACKEND_NAMES = {"torch": "torch (eager)", "onnxruntime": "ONNX Runtime FP32",
                 "onnxruntime-int8": "ONNX Runtime INT8"}
# The search's promise: the chosen arch's speedup measured in the runtime it was searched for
# is within this share of the predicted one.
SPEEDUP_MATCH = 0.10


@dataclass
class Deployment:
    """The chosen arch as shipped: its latency and speedup over the base arch under each backend
    (the latency protocol), one task's dev score from the fine-tuned torch model and its ONNX
    Runtime exports, and the runtime the search targeted (the backend of time.pt's latencies),
    which is the one shipped."""

    task: str
    scores: dict[str, float]       # runtime -> dev score (0-100)
    latency_ms: dict[str, float]   # backend -> ms
    base_ms: dict[str, float] = field(default_factory=dict)  # backend -> the base arch's ms
    searched: str = "torch"        # the backend the search's latencies were timed with
    predicted_speedup: float | None = None  # over the base arch, in `searched`
    shipped: str | None = None     # the shipped model: the ONNX file of `searched`

    def speedup(self, backend: str) -> float | None:
        if backend not in self.base_ms:
            return None
        return self.base_ms[backend] / self.latency_ms[backend]


def shipped_model(deployed_results: str | os.PathLike, backend: str) -> str | None:
    """The graph the deploy stage wrote for `backend` beside `deployed_results` (the export
    whose sidecar has that precision); None for torch, or when there is none."""
    if backend == "torch":
        return None
    precision = "int8" if backend.endswith("int8") else "fp32"
    for path in sorted(Path(deployed_results).parent.glob("*.onnx")):
        if (read_sidecar(path) or {}).get("precision") == precision:
            return str(path)
    return None


def deployment(deployed_results: str | os.PathLike, arch: Arch, torch_scores: Mapping[str, float],
               config: Any, scheme: Scheme, threads: int = 1, infer_cnt: int = 10,
               base: Arch | None = None, searched: str = "torch",
               measured: tuple[float, float] | None = None,
               predicted_speedup: float | None = None) -> Deployment:
    """Read the ONNX Runtime blocks of `deployed_results` (`superbert_run_en_classifier.py
    --onnx [--int8]` of a fine-tuned `arch`) and time `arch` under every backend: against
    `base` (its speedup, `measure_latencies`) when given, else alone. `measured` is (base ms,
    arch ms) already timed in `searched`, the runtime the search targeted: not timed again."""
    blocks = [b for b in read_results(deployed_results) if b.runtime is not None]
    if not blocks:
        raise UserError(f"{deployed_results} holds no ONNX Runtime results (write them with "
                        f"superbert_run_en_classifier.py --onnx)")
    tasks = {b.task for b in blocks}
    if len(tasks) != 1 or any(b.arch != arch for b in blocks):
        raise UserError(f"{deployed_results} should hold one task of the arch {arch.short()}, "
                        f"got {', '.join(sorted(tasks))} of "
                        f"{', '.join(sorted({b.arch.short() for b in blocks}))}")
    task = blocks[0].task
    scores = {"torch": torch_scores[task]} if task in torch_scores else {}
    scores |= {b.runtime: b.score for b in blocks}
    latency, base_ms = {}, {}
    for backend in DEPLOY_BACKENDS:
        if backend == searched and measured is not None:
            base_ms[backend], latency[backend] = measured
        elif base is not None:
            t = measure_latencies(config, scheme, [arch], base, threads, infer_cnt,
                                  backend=backend)
            base_ms[backend], latency[backend] = t.reference_ms, t.arch_ms[0]
        else:
            with Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt,
                                                      backend=backend)) as timer:
                latency[backend] = timer.time_reference(arch).ms
    return Deployment(task, scores, latency, base_ms, searched, predicted_speedup,
                      shipped_model(deployed_results, searched))
