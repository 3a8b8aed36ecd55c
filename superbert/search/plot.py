"""The plot of one search step: fitness against predicted latency."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..arch import Arch
from ..io import atomic_path
from ..latency import LatencyPredictor
from .window import LatencyWindow


def plot_generation(path: str | os.PathLike, evaluated: dict[Arch, float], predictor: LatencyPredictor,
                    window: LatencyWindow, parents: Sequence[Arch] = (),
                    children: Sequence[Arch] = (), front: Sequence[Arch] = ()) -> None:
    """Fitness vs predicted latency of everything evaluated, the window, parents, the front,
    and the new generation (drawn at the bottom: not evaluated yet)."""
    archs = list(evaluated)
    lat = predictor.predict(archs)
    fit = np.asarray([evaluated[a] for a in archs])
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    ax.axvspan(window.lo, window.hi, color="tab:green", alpha=0.12, label="latency window")
    ax.scatter(lat, fit, s=14, color="tab:gray", label=f"evaluated ({len(archs)})")
    if parents:
        ps = set(parents)
        sel = [i for i, a in enumerate(archs) if a in ps]
        ax.scatter(lat[sel], fit[sel], s=22, color="tab:blue", label=f"parents ({len(sel)})")
    if front:
        fs = sorted((float(predictor.predict_one(a)), evaluated[a]) for a in front)
        ax.plot([x for x, _ in fs], [y for _, y in fs], "o-", color="tab:red", ms=4,
                label="Pareto front")
    if children:
        y0 = float(np.min(fit)) - 0.05 * (float(np.ptp(fit)) or 1.0)
        ax.scatter(predictor.predict(list(children)), np.full(len(children), y0), marker="|",
                   s=60, color="tab:orange", label=f"next generation ({len(children)})")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("fitness (mean task score)")
    ax.set_title(f"search at {window.speedup:g}x speedup")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
