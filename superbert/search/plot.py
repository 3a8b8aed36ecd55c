"""The plot of one search step: fitness against predicted latency, and the spread of each
generation.

Left: everything evaluated, the latency window, parents, the Pareto front and the next
generation (drawn at the bottom: not evaluated yet). Right (when archs were evaluated): every
evaluated fitness by generation, each point drawn, with the generation's median, so the spread
shows and not only a trend line. The results file holds no generation number; archs are taken
in the order it lists them (the order they were evaluated: a generation's archs are appended
together) in rounds of `gen_size`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..arch import Arch
from ..io import atomic_path
from ..latency import LatencyPredictor
from .window import LatencyWindow


def plot_generation(path: str | os.PathLike, evaluated: dict[Arch, float],
                    predictor: LatencyPredictor, window: LatencyWindow, parents: Sequence[Arch] = (),
                    children: Sequence[Arch] = (), front: Sequence[Arch] = (),
                    gen_size: int | None = None) -> None:
    """See the module docstring; without `gen_size` (or with nothing evaluated yet: Random /
    Fast) only the left panel is drawn."""
    archs = list(evaluated)
    lat = predictor.predict(archs)
    fit = np.asarray([evaluated[a] for a in archs])
    rounds = gen_size is not None and gen_size >= 1 and len(archs) > 0
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5 if rounds else 6.5, 4.5))
    axes = fig.subplots(1, 2 if rounds else 1, squeeze=False)[0]
    ax = axes[0]
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
    ax.set_xlabel(f"predicted latency (ms, {predictor.backend} backend)")
    ax.set_ylabel("fitness (mean task score)")
    ax.set_title(f"search at {window.speedup:g}x speedup")
    ax.legend(fontsize=8)
    if rounds:
        plot_spread(axes[1], fit, gen_size)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)


def plot_spread(ax, fitness: np.ndarray, gen_size: int) -> None:
    """Every fitness by generation (rounds of `gen_size` in file order), jittered sideways, with
    each generation's median and its min..max range."""
    gens = np.arange(len(fitness)) // gen_size
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(fitness))
    ax.scatter(gens + jitter, fitness, s=12, alpha=0.6, color="tab:gray", label="evaluated arch")
    ids = np.unique(gens)
    med = [float(np.median(fitness[gens == g])) for g in ids]
    lo = [float(np.min(fitness[gens == g])) for g in ids]
    hi = [float(np.max(fitness[gens == g])) for g in ids]
    ax.vlines(ids, lo, hi, color="tab:blue", lw=1, alpha=0.7, label="min..max")
    ax.plot(ids, med, "s", color="tab:blue", ms=6, label="median")
    ax.set_xticks(ids)
    ax.set_xlabel(f"generation (rounds of {gen_size} archs, in results-file order)")
    ax.set_ylabel("fitness (mean task score)")
    ax.set_title("fitness of each generation")
    ax.legend(fontsize=8)
