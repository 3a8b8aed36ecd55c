"""Searched archs timed for real: measured speedups beside the predicted ones."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..arch import Arch, Scheme
from ..errors import UserError
from ..latency import BERT_BASE, LatencyPredictor, Timer, time_against_reference
from ..timing_protocol import TimingProtocol


@dataclass(frozen=True)
class Measured:
    arch: Arch
    predicted_ms: float
    measured_ms: float
    predicted_speedup: float
    measured_speedup: float


def reference_arch(predictor: LatencyPredictor) -> Arch:
    """The arch whose latency time.pt records as the base: BERT-base, or the custom reference
    the latency dataset was timed against (`inference_time_evaluation.py --base_arch`)."""
    recorded = (predictor.meta.get("timing") or {}).get("base_arch")
    try:
        return Arch.parse(recorded) if recorded else BERT_BASE
    except UserError:
        return BERT_BASE


def reference_name(predictor: LatencyPredictor) -> str:
    arch = reference_arch(predictor)
    return "BERT-base" if arch == BERT_BASE else f"the reference {arch.short()}"


def measure_archs(archs: Sequence[Arch], predictor: LatencyPredictor, config: Any,
                  scheme: str | Scheme, protocol: TimingProtocol | None = None,
                  progress: bool = True, where: str = "time.pt") -> tuple[float, list[Measured]]:
    """Time the predictor's reference arch (BERT-base unless the latency dataset recorded
    another) and `archs` now, on this machine, under the protocol the dataset was timed with
    and with the backend the predictor was fitted on (`time_against_reference`: the reference
    before and after the archs); speedups measured vs predicted."""
    if protocol is None:
        protocol = TimingProtocol.from_record((predictor.meta.get("timing") or {}).get("protocol"),
                                              f"{where}: meta.timing")
    protocol = replace(protocol, backend=predictor.backend)
    timer = Timer(config, scheme, protocol)
    try:
        timed = time_against_reference(timer, archs, reference_arch(predictor),
                                       progress=progress)
    finally:
        timer.close()
    base = timed.reference_ms
    pred_base = predictor.base_latency_ms or base
    out = []
    for a, ms in zip(timed.archs, timed.arch_ms):
        p = predictor.predict_one(a)
        out.append(Measured(a, p, ms, pred_base / p, base / ms))
    return base, out
