"""The summary's "what the supernet stage did" lines (superbert.report.stage_effect)."""
from __future__ import annotations

import pytest

from superbert.arch import Arch
from superbert.errors import UserError
from superbert.report.chance import task_levels
from superbert.report.stage_effect import stage_effect, stage_effect_lines
from superbert.results import TaskResult, format_results_block

CHOSEN = Arch(3, 384, 12, 384, 1536)
NARROW = Arch(4, 240, 12, 240, 960)


def write(path, scores: dict[tuple[Arch, str, int], float]) -> str:
    path.write_text("".join(
        format_results_block(TaskResult(task, arch, arch.param_count(), score, None, 1.0, 1,
                                        seed=seed))
        for (arch, task, seed), score in scores.items()))
    return str(path)


def test_before_and_after_per_arch_and_task_mean_over_seeds(tmp_path):
    before = write(tmp_path / "before", {(CHOSEN, "sst-2", 1): 0.9, (CHOSEN, "mnli", 1): 0.5,
                                         (NARROW, "sst-2", 1): 0.88, (NARROW, "mnli", 1): 0.34,
                                         (CHOSEN, "sst-2", 2): 0.8, (CHOSEN, "mnli", 2): 0.6,
                                         (NARROW, "sst-2", 2): 0.86, (NARROW, "mnli", 2): 0.36})
    after = write(tmp_path / "after", {(CHOSEN, "sst-2", 1): 0.91, (CHOSEN, "mnli", 1): 0.6,
                                       (NARROW, "sst-2", 1): 0.9, (NARROW, "mnli", 1): 0.5,
                                       (CHOSEN, "sst-2", 2): 0.91, (CHOSEN, "mnli", 2): 0.6,
                                       (NARROW, "sst-2", 2): 0.9, (NARROW, "mnli", 2): 0.46})
    rows = stage_effect(before, after, {CHOSEN.short(): "chosen",
                                        NARROW.short(): "default ratios, hidden 240"})
    assert [r.arch for r in rows] == [CHOSEN.short(), NARROW.short()]
    assert rows[0].before == pytest.approx({"mnli": 55.0, "sst-2": 85.0})
    assert rows[1].after == pytest.approx({"mnli": 48.0, "sst-2": 90.0})
    lines = stage_effect_lines(rows, "30 steps", {"mnli": task_levels("mnli")})
    assert lines[0].startswith("The supernet stage (30 steps)")
    assert lines[-1] == (f"- `{NARROW.short()}` (default ratios, hidden 240): mnli 35.0 -> 48.0 "
                         "(chance 33.3), sst-2 87.0 -> 90.0")


def test_files_of_other_archs_or_seeds_are_refused(tmp_path):
    before = write(tmp_path / "before", {(CHOSEN, "sst-2", 1): 0.9})
    other_seed = write(tmp_path / "after", {(CHOSEN, "sst-2", 2): 0.9})
    with pytest.raises(UserError, match="same archs, tasks and seeds"):
        stage_effect(before, other_seed, {CHOSEN.short(): "chosen"})
    with pytest.raises(UserError, match="no result for"):
        stage_effect(before, before, {NARROW.short(): "narrow"})
