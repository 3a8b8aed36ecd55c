"""The summary's figures: search progress (fitness per generation) and fitness against latency
(`latency_scores` gathers its data, which summary.json holds too)."""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..arch import Arch
from ..io import atomic_path
from ..latency import LatencyPredictor
from ..results import Evaluated
from ..search.window import LatencyWindow


def plot_search_progress(path: str | os.PathLike, evaluated: Sequence[Evaluated]) -> Path:
    """Fitness of every evaluated arch per generation, with the best-so-far line."""
    from matplotlib.figure import Figure  # imported here: most callers never plot

    gens = sorted({e.generation for e in evaluated})
    fig = Figure(figsize=(6, 4))  # no pyplot: no global backend or figure registry to manage
    ax = fig.subplots()
    xs = [e.generation for e in evaluated]
    ax.scatter(xs, [e.fitness for e in evaluated], alpha=0.6, label="evaluated arch")
    best, running = [], -math.inf
    for g in gens:
        running = max(running, max(e.fitness for e in evaluated if e.generation == g))
        best.append(running)
    ax.plot(gens, best, "r-o", label="best so far")
    ax.set_xlabel("generation (1 = Random, then Evolved)")
    ax.set_ylabel("fitness (mean task score, 0-100)")
    ax.set_xticks(gens)
    ax.set_title("search progress")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    return path


# ---- fitness against latency --------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyPoint:
    """One arch the search evaluated: its proxy fitness (mean search-task score) at its predicted
    latency, and its measured latency where the summary timed it (the chosen and the
    default-ratio arch)."""

    arch: str
    generation: int
    fitness: float
    predicted_ms: float
    measured_ms: float | None = None

    @property
    def latency_ms(self) -> float:
        return self.predicted_ms if self.measured_ms is None else self.measured_ms


@dataclass(frozen=True)
class MarkedArch:
    """An arch the plot singles out ("chosen", "default ratios") with its final scores (the
    further-trained model fine-tuned; empty when it was not) and its proxy fitness (None when
    the search never evaluated it)."""

    role: str
    arch: str
    latency_ms: float
    measured: bool
    fitness: float | None
    final_scores: dict[str, float]

    @property
    def final_mean(self) -> float | None:
        s = self.final_scores
        return sum(s.values()) / len(s) if s else None


@dataclass(frozen=True)
class LatencyScores:
    """What `latency_vs_score.png` shows (and `summary.json` holds under `latency_vs_score`)."""

    points: list[LatencyPoint]
    marked: list[MarkedArch]
    reference: str                # the reference arch of the speedups (short form) ...
    reference_name: str           # ... and how the search named it (MiniLM's arch, BERT-base)
    reference_ms: float           # its latency on the predictor's scale (time.pt)
    window_ms: tuple[float, float] | None  # the searched latency window (predicted ms)
    speedup: float | None         # the search's target speedup
    backend: str                  # the predictor's timing backend

    def to_json(self) -> dict[str, Any]:
        """The fields, each point with the latency it is drawn at and each marked arch with its
        final mean score."""
        return {**asdict(self),
                "points": [{**asdict(p), "latency_ms": p.latency_ms} for p in self.points],
                "marked": [{**asdict(m), "final_mean": m.final_mean} for m in self.marked]}


def latency_scores(evaluated: Sequence[Evaluated], predictor: LatencyPredictor,
                   measured_ms: Mapping[Arch, float], reference: Arch, reference_ms: float,
                   window: LatencyWindow | None = None,
                   marked: Mapping[str, tuple[Arch, Mapping[str, float] | None]] | None = None,
                   ) -> LatencyScores:
    """Every evaluated arch at its predicted latency (and measured, where `measured_ms` has it);
    `marked`: role -> (arch, its final scores or None)."""
    predicted = predictor.predict([e.arch for e in evaluated]) if evaluated else []
    points = [LatencyPoint(str(e.arch), e.generation, e.fitness, float(ms),
                           measured_ms.get(e.arch)) for e, ms in zip(evaluated, predicted)]
    fit = {e.arch: e.fitness for e in evaluated}
    marks = []
    for role, (arch, final) in (marked or {}).items():
        ms = measured_ms.get(arch)
        marks.append(MarkedArch(role, str(arch),
                                float(predictor.predict_one(arch)) if ms is None else ms,
                                ms is not None, fit.get(arch), dict(final or {})))
    return LatencyScores(points, marks, reference.short(),
                         window.base_name if window is not None else reference.short(),
                         reference_ms, None if window is None else (window.lo, window.hi),
                         None if window is None else window.speedup, predictor.backend)


MARK_STYLE = {"chosen": ("*", "tab:red"), "default ratios": ("D", "tab:purple")}
MARK_NAME = {"chosen": "chosen arch", "default ratios": "default-ratio arch"}


def plot_latency_vs_score(path: str | os.PathLike, data: LatencyScores) -> Path:
    """Proxy fitness of every evaluated arch against its latency, the searched window and the
    reference latency as vertical marks, the chosen and default-ratio archs with their final
    scores (hollow markers, joined to their proxy point); the legend sits under the axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7.5))
    ax = fig.subplots()
    if data.window_ms is not None:
        lo, hi = data.window_ms
        ax.axvspan(lo, hi, color="tab:green", alpha=0.12,
                   label=f"target latency window {lo:.2f}-{hi:.2f} ms ({data.speedup:g}x faster "
                         f"than {data.reference_name}; predicted latency)")
        for x in (lo, hi):
            ax.axvline(x, color="tab:green", lw=1, ls="--")
    ax.axvline(data.reference_ms, color="black", lw=1.2,
               label=f"reference {data.reference}: {data.reference_ms:.2f} ms (the latency "
                     f"predictor's reference)")
    ax.scatter([p.latency_ms for p in data.points], [p.fitness for p in data.points], s=24,
               color="tab:gray", alpha=0.7,
               label=f"evaluated arch ({len(data.points)}): proxy fitness (mean search-task "
                     f"score) at its predicted latency")
    for m in data.marked:
        marker, color = MARK_STYLE.get(m.role, ("s", "tab:orange"))
        name = f"{MARK_NAME.get(m.role, m.role)} {Arch.parse(m.arch).short()}"
        where = (f"{m.latency_ms:.2f} ms (measured: the reference's ms / measured speedup)"
                 if m.measured else f"{m.latency_ms:.2f} ms predicted")
        if m.fitness is not None:
            ax.scatter([m.latency_ms], [m.fitness], marker=marker, s=170, color=color,
                       edgecolor="black", zorder=3,
                       label=f"{name}: proxy fitness {m.fitness:.1f} at {where}")
        if m.final_mean is not None:
            tasks = ", ".join(f"{t} {v:.1f}" for t, v in sorted(m.final_scores.items()))
            label = (f"{MARK_NAME.get(m.role, m.role)}: final score {m.final_mean:.1f} "
                     f"(further-trained, fine-tuned: {tasks})" if m.fitness is not None else
                     f"{name}: final score {m.final_mean:.1f} at {where} ({tasks}; not "
                     f"evaluated by the search)")
            ax.scatter([m.latency_ms], [m.final_mean], marker=marker, s=170, facecolor="none",
                       edgecolor=color, linewidth=2, zorder=3, label=label)
            if m.fitness is not None:
                ax.plot([m.latency_ms] * 2, [m.fitness, m.final_mean], ls=":", color=color)
    ax.set_xlabel(f"latency (ms, batch 1 x 128, 1 thread, {data.backend}; the predictor's "
                  "scale)")
    ax.set_ylabel("score (mean over tasks, 0-100)")
    ax.set_title("every arch the search evaluated: score against latency\n(filled: proxy "
                 "fitness in the search; hollow: final score after further training)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    # Long labels wrap, and the saved figure grows to hold the legend instead of squeezing the
    # axes beside it.
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [textwrap.fill(label, 95, subsequent_indent="    ") for label in labels],
              fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.11), borderaxespad=0)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    return path
