"""The summary's figures."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from ..io import atomic_path
from ..results import Evaluated


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
