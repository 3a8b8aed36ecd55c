"""The latency window of the original: an arch is feasible when its predicted latency lies in
[0.85, 1.1] x (T_base / speedup), T_base being the reference (BERT-base) latency measured on the
machine (recorded in time.pt) rather than the original's hard-coded 886/1063 ms.

A search step records the window it searched beside the generation it writes (`window_path`:
`<generation file>.window.json`, the dataclass's fields as JSON), so the summary draws the same
window without re-reading the searcher's flags."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_write_text, check_fields, read_json


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


def window_path(generation_file: str | os.PathLike) -> Path:
    """Where the window searched for `generation_file` is recorded."""
    return Path(f"{generation_file}.window.json")


def write_window(generation_file: str | os.PathLike, window: LatencyWindow) -> Path:
    path = window_path(generation_file)
    atomic_write_text(path, json.dumps(asdict(window), indent=1) + "\n")
    return path


def read_window(generation_file: str | os.PathLike) -> LatencyWindow | None:
    """The window recorded beside `generation_file`; None when none was (an older search)."""
    path = window_path(generation_file)
    if not path.is_file():
        return None
    record = read_json(path, "latency window record")
    names = [f.name for f in fields(LatencyWindow)]
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object with the fields {', '.join(names)}")
    check_fields(record, {"base_ms": "positive number", "speedup": "positive number",
                          "min_ratio": "positive number", "max_ratio": "positive number",
                          "base_name": "string"}, str(path), required=names)
    return LatencyWindow(**{k: record[k] for k in names})
