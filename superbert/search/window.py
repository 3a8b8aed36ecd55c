"""The latency window of the original: an arch is feasible when its predicted latency lies in
[0.85, 1.1] x (T_base / speedup), T_base being the reference (BERT-base) latency measured on the
machine (recorded in time.pt) rather than the original's hard-coded 886/1063 ms."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class LatencyWindow:
    base_ms: float
    speedup: float
    min_ratio: float = 0.85
    max_ratio: float = 1.1
    base_name: str = "BERT-base"  # the reference arch the base latency was measured on

    def __post_init__(self) -> None:
        if not (self.base_ms > 0 and math.isfinite(self.base_ms)):
            raise UserError(f"the {self.base_name} latency must be a positive number of ms, got "
                            f"{self.base_ms}")
        if not (self.speedup > 0 and math.isfinite(self.speedup)):
            raise UserError(f"--latency_constraint must be a positive speedup, got {self.speedup}")
        if not 0 < self.min_ratio <= self.max_ratio:
            raise UserError(f"the latency window needs 0 < --lat_min_ratio <= --lat_max_ratio, got "
                            f"{self.min_ratio} and {self.max_ratio}")

    @property
    def target_ms(self) -> float:
        return self.base_ms / self.speedup

    @property
    def lo(self) -> float:
        return self.min_ratio * self.target_ms

    @property
    def hi(self) -> float:
        return self.max_ratio * self.target_ms

    def contains(self, ms: np.ndarray | float) -> np.ndarray | bool:
        return (ms >= self.lo) & (ms <= self.hi)

    def describe(self) -> str:
        return (f"{self.speedup:g}x speedup over {self.base_name} ({self.base_ms:.1f} ms): predicted "
                f"latency in [{self.lo:.2f}, {self.hi:.2f}] ms (speedup "
                f"{self.base_ms / self.hi:.2f}x..{self.base_ms / self.lo:.2f}x)")
