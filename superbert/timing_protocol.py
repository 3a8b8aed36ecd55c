"""The CPU timing protocol as a value: what is timed and how (`TimingProtocol`), one arch's
timing (`Timing`), and the runtimes a forward can be timed with (`BACKENDS`).

Below both `latency` (the torch timer, the dataset, the predictor) and `deploy` (the ONNX Runtime
backends, which time under the same protocol), so neither imports the other for it. See
`latency/timing.py` for the protocol's rationale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .arch import Arch
from .errors import UserError

TIMING_TOKEN_ID = 9333  # every timed token (the original's)
# "torch" (eager PyTorch), or the same model exported to ONNX and run by ONNX Runtime (INT8 after
# its dynamic quantiser): `deploy.OnnxTimingBackend`.
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def check_backend(backend: str) -> str:
    """The backend name, or one UserError listing the known ones."""
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


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
    # The runtime: "torch", "onnxruntime" or "onnxruntime-int8" (see the module docstring).
    backend: str = "torch"

    def __post_init__(self) -> None:
        for name in ("threads", "batch_size", "seq_len", "infer_cnt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                flag = "max_seq_length" if name == "seq_len" else name
                raise UserError(f"--{flag} must be a whole number of at least 1, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, np.integer)) \
                or self.warmup < 0:
            raise UserError(f"the number of warm-up runs must be 0 or more, got {self.warmup!r}")
        check_backend(self.backend)
        if self.backend != "torch" and self.subject != "extracted":
            raise UserError(f"--backend {self.backend} times the extracted model (an ONNX graph); "
                            f"the sliced supernet (--time_supernet) is timed with --backend torch")
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
    def from_record(cls, saved: dict[str, Any] | None,
                    where: str = "the record") -> "TimingProtocol":
        """The protocol a sidecar / time.pt recorded (unknown keys ignored, missing ones default:
        a record older than the backend field was timed with torch). A value of the wrong type
        is one UserError naming `where` and the field."""
        if saved is None:
            saved = {}
        if not isinstance(saved, dict):
            raise UserError(f"{where}: field 'protocol' must be an object, got {saved!r}")
        fields = cls.__dataclass_fields__
        for key, value in saved.items():
            if key not in fields:
                continue
            want = type(fields[key].default)
            if want is int and (isinstance(value, bool) or not isinstance(value, int)) or \
                    want is not int and not isinstance(value, want):
                raise UserError(f"{where}: field 'protocol.{key}' must be {want.__name__}, got "
                                f"{value!r}")
        try:
            return cls(**{k: v for k, v in saved.items() if k in fields})
        except UserError as err:
            raise UserError(f"{where}: {err}") from None


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
