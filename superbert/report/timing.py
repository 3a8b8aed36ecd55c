"""Latencies the summary times itself, never the predictor's: the chosen arch (and the others
shown) against the reference under the latency protocol of `superbert.latency`, in one process
(base and arch interleaved, so both see the same machine state), and the chosen arch as deployed
under each backend."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..arch import Arch, Scheme
from ..errors import UserError
from ..latency import Speedups, Timer, time_against_reference
from ..results import read_results
from ..timing_protocol import TimingProtocol

def measure_latencies(config: Any, scheme: str | Scheme, archs: Sequence[Arch], base: Arch,
                      threads: int = 1, infer_cnt: int = 10, rounds: int = 3) -> Speedups:
    """`archs` and `base` timed under the latency protocol by the one speedup measurement
    (`latency.time_against_reference`: the base brackets every round), in one process."""
    timer = Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt))
    return time_against_reference(timer, archs, base, rounds)


def measure_speedup(config: Any, scheme: str | Scheme, arch: Arch, base: Arch, threads: int = 1,
                    infer_cnt: int = 10, rounds: int = 3) -> tuple[float, float]:
    """(base ms, arch ms) of one arch (`measure_latencies`)."""
    t = measure_latencies(config, scheme, [arch], base, threads, infer_cnt, rounds)
    return t.reference_ms, t.arch_ms[0]


DEPLOY_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
RUNTIME_OF_BACKEND = {"torch": "torch", "onnxruntime": "onnxruntime-fp32",
                      "onnxruntime-int8": "onnxruntime-int8"}


@dataclass
class Deployment:
    """The chosen arch as shipped: its latency under each backend (the latency protocol) and
    one task's dev score from the fine-tuned torch model and its ONNX Runtime exports."""

    task: str
    scores: dict[str, float]       # runtime -> dev score (0-100)
    latency_ms: dict[str, float]   # backend -> ms


def deployment(deployed_results: str | os.PathLike, arch: Arch, torch_scores: Mapping[str, float],
               config: Any, scheme: Scheme, threads: int = 1, infer_cnt: int = 10) -> Deployment:
    """Read the ONNX Runtime blocks of `deployed_results` (`superbert_run_en_classifier.py
    --onnx [--int8]` of a fine-tuned `arch`) and time `arch` under every backend."""
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
    latency = {}
    for backend in DEPLOY_BACKENDS:
        with Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt,
                                                  backend=backend)) as timer:
            latency[backend] = timer.time_reference(arch).ms
    return Deployment(task, scores, latency)
