"""What the supernet stage did to the slices the summary cares about: the same archs scored
(proxy fine-tuning of the inherited slice, the evaluator's `subbert.results`) on the supernet's
starting point and on the trained supernet, one line per arch.

The starting point of a grown supernet is the reordered, never-trained copy
(`pre_training.py --reorder_only`); the two results files must hold the same archs and tasks
with the same seeds, or the comparison is refused.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import UserError
from ..results import read_results
from .chance import TaskLevels


@dataclass(frozen=True)
class StageEffect:
    arch: str
    role: str                       # "chosen", "narrow hidden", ...
    before: dict[str, float]        # task -> score (0-100; mean over seeds)
    after: dict[str, float]

    def line(self, levels: Mapping[str, TaskLevels] | None = None) -> str:
        parts = []
        for task in sorted(self.before):
            chance = (levels or {}).get(task)
            note = f" (chance {chance.chance:.1f})" if chance and chance.chance is not None else ""
            parts.append(f"{task} {self.before[task]:.1f} -> {self.after[task]:.1f}{note}")
        return f"`{self.arch}` ({self.role}): " + ", ".join(parts)


def _scores(path: str | os.PathLike) -> dict[tuple[str, str], dict[int | None, float]]:
    out: dict[tuple[str, str], dict[int | None, float]] = {}
    for r in read_results(str(path)):
        out.setdefault((r.arch.short(), r.task), {})[r.seed] = r.score
    return out


def stage_effect(before_results: str | os.PathLike, after_results: str | os.PathLike,
                 roles: Mapping[str, str]) -> list[StageEffect]:
    """One `StageEffect` per arch of `roles` (short arch string -> role), in its order."""
    before, after = _scores(before_results), _scores(after_results)
    if set(before) != set(after) or any(before[k].keys() != after[k].keys() for k in before):
        raise UserError(f"{before_results} and {after_results} do not hold the same archs, "
                        "tasks and seeds: the supernet stage's effect needs both")
    rows = []
    for arch, role in roles.items():
        tasks = sorted(t for a, t in before if a == arch)
        if not tasks:
            raise UserError(f"{before_results} holds no result for {arch}")
        mean = lambda d: statistics.fmean(d.values())  # noqa: E731
        rows.append(StageEffect(arch, role, {t: mean(before[(arch, t)]) for t in tasks},
                                {t: mean(after[(arch, t)]) for t in tasks}))
    return rows


def stage_effect_lines(rows: Sequence[StageEffect], steps_note: str,
                       levels: Mapping[str, TaskLevels] | None = None) -> list[str]:
    """The summary's paragraph: a heading sentence and one line per arch."""
    if not rows:
        return []
    return [f"The supernet stage ({steps_note}), each slice scored the way the search scores "
            "candidates, before the stage (the reordered, never-trained copy) -> after it:", ""
            ] + [f"- {r.line(levels)}" for r in rows]
