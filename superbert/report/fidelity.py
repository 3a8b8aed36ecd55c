"""The fidelity benchmark's reusable parts: equal-latency archs of spread shapes, Kendall tau with
a bootstrap interval, seed noise against the spread between archs, and the proxy-vs-stand-alone
plot (`bench/bench_fidelity.py` runs the pipeline; these are the pure parts it scores with).

A search under a latency constraint only compares archs of about one latency, so the proxy's
fidelity that matters is over such archs: drawn from one latency band (every latency within
+-`band` of the band's centre) and spread in shape (deep-narrow to shallow-wide, FFN/hidden and
qkv/hidden ratios), by greedy max-min distance over the normalized shape features.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..arch import Arch
from ..errors import UserError
from ..io import atomic_path

SHAPE_FEATURES = ("layers", "hidden", "ffn/hidden", "qkv/hidden")


def shape_features(archs: Sequence[Arch]) -> np.ndarray:
    """[n, 4]: layers, hidden, FFN/hidden and qkv/hidden of each arch."""
    return np.asarray([[a.layers, a.hidden, a.ffn / a.hidden, a.qkv / a.hidden] for a in archs],
                      dtype=np.float64).reshape(len(archs), len(SHAPE_FEATURES))


def latency_band(ms: Sequence[float], band: float, target: float | None = None) -> list[int]:
    """Indices of the largest set of latencies that all lie within +-`band` of the set's centre
    (max <= min x (1 + band) / (1 - band)); of equally large sets, the one whose centre is
    nearest `target` (without one, the fastest). Sorted by latency."""
    if not 0 < band < 1:
        raise UserError(f"the latency band must be in (0, 1), got {band}")
    lat = np.asarray(ms, dtype=np.float64)
    if len(lat) == 0:
        return []
    if not (np.all(np.isfinite(lat)) and np.all(lat > 0)):
        raise UserError("latencies must be positive numbers of ms")
    order = np.argsort(lat, kind="stable")
    s = lat[order]
    # For each start i, the band is s[i] .. s[i] x (1 + band) / (1 - band).
    ends = np.searchsorted(s, s * (1 + band) / (1 - band) * (1 + 1e-12), side="right")
    counts = ends - np.arange(len(s))
    best = counts.max()
    starts = np.flatnonzero(counts == best)
    if target is not None:
        centres = (s[starts] + s[ends[starts] - 1]) / 2
        i = int(starts[np.argmin(np.abs(centres - target))])
    else:
        i = int(starts[0])
    return [int(k) for k in order[i:ends[i]]]


def spread_shapes(archs: Sequence[Arch], n: int) -> list[int]:
    """Indices of `n` archs of spread shapes: greedy max-min distance over the shape features,
    each scaled to [0, 1] over `archs` (a constant feature counts for nothing), starting from
    the arch farthest from the mean shape; ties go to the earlier arch. Distinct archs only."""
    if n < 1:
        raise UserError(f"need at least one arch to draw, got {n}")
    first_of: dict[Arch, int] = {}
    for i, a in enumerate(archs):
        first_of.setdefault(a, i)
    idx = sorted(first_of.values())
    if len(idx) <= n:
        return idx
    x = shape_features([archs[i] for i in idx])
    span = x.max(axis=0) - x.min(axis=0)
    x = (x - x.min(axis=0)) / np.where(span > 0, span, 1.0)
    picks = [int(np.argmax(np.linalg.norm(x - x.mean(axis=0), axis=1)))]
    nearest = np.linalg.norm(x - x[picks[0]], axis=1)
    while len(picks) < n:
        nxt = int(np.argmax(nearest))  # first of the farthest: deterministic ties
        picks.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[nxt], axis=1))
    return [idx[p] for p in picks]


def draw_equal_latency(archs: Sequence[Arch], ms: Sequence[float], n: int, band: float = 0.05,
                       target: float | None = None) -> list[int]:
    """Indices of up to `n` archs of one latency band (`latency_band`) and spread shapes
    (`spread_shapes` among the band's archs); fewer when the band holds fewer distinct archs."""
    if len(archs) != len(ms):
        raise UserError(f"{len(archs)} archs but {len(ms)} latencies")
    inside = latency_band(ms, band, target)
    return [inside[i] for i in spread_shapes([archs[i] for i in inside], n)]


def min_pairwise_distance(archs: Sequence[Arch], scale_over: Sequence[Arch]) -> float:
    """The smallest distance between two of `archs` in the shape features scaled as
    `spread_shapes` scales them over `scale_over` (how spread a draw is)."""
    ref = shape_features(scale_over)
    lo, span = ref.min(axis=0), ref.max(axis=0) - ref.min(axis=0)
    x = (shape_features(archs) - lo) / np.where(span > 0, span, 1.0)
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    return float(d[np.triu_indices(len(x), 1)].min()) if len(x) > 1 else float("inf")


# ---- rank agreement -----------------------------------------------------------------------------
def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of x, y [..., n] (scipy's default tau, vectorized over
    the leading axes): sum over pairs of sign(dx) sign(dy) / sqrt(untied-x pairs x untied-y
    pairs); nan where either has no untied pair."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    num = (sx * sy).sum(axis=(-2, -1))
    den = np.sqrt(np.abs(sx).sum(axis=(-2, -1)) * np.abs(sy).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def kendall_with_interval(x: Sequence[float], y: Sequence[float], resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:
    """Kendall tau of (x, y) and its 95% bootstrap interval over the pairs, resampled with
    replacement (resamples whose tau is undefined, e.g. one arch drawn every time, are
    skipped; none defined: nan, nan)."""
    if len(x) != len(y):
        raise UserError(f"{len(x)} proxy scores but {len(y)} stand-alone scores")
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    tau = float(kendall_tau_b(xs, ys))
    idx = np.random.default_rng(seed).integers(0, len(xs), (resamples, len(xs)))
    taus = kendall_tau_b(xs[idx], ys[idx])
    taus = taus[np.isfinite(taus)]
    if not len(taus):
        return tau, float("nan"), float("nan")
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return tau, float(lo), float(hi)


@dataclass(frozen=True)
class Spread:
    """The stand-alone scores of archs over seeds: the gap between the best and worst arch's
    mean, against the seed noise (the mean over archs of each arch's range over seeds)."""

    best: Arch
    worst: Arch
    arch_spread: float
    seed_noise: float
    seeds: int

    @property
    def verdict(self) -> str:
        if self.seeds < 2:
            return "one seed: no seed noise to compare with"
        if self.arch_spread <= self.seed_noise:
            return ("the archs differ by less than the seed noise: at this latency the search "
                    "cannot matter")
        return "the archs differ by more than the seed noise"


def seed_spread(scores: Mapping[Arch, Mapping[int, float]]) -> Spread:
    """`Spread` of {arch: {seed: score}} (at least one arch, every arch with the same seeds)."""
    if not scores:
        raise UserError("no stand-alone scores to compare")
    means = {a: statistics.fmean(s.values()) for a, s in scores.items()}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    seeds = min(len(s) for s in scores.values())
    noise = statistics.fmean(max(s.values()) - min(s.values()) for s in scores.values())
    return Spread(best, worst, means[best] - means[worst], noise, seeds)


def median_arch(scores: Mapping[Arch, float]) -> Arch:
    """The arch of median score (the lower of the two middle ones for an even count; ties by
    the given order): what drawing one arch at random typically gets."""
    if not scores:
        raise UserError("no scored archs to take the median of")
    ranked = sorted(scores, key=lambda a: scores[a])  # stable: ties keep the given order
    return ranked[(len(ranked) - 1) // 2]


# ---- the plot -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FidelityPoint:
    """One arch: its proxy score (inherited slice) and stand-alone score (mean over seeds), and
    whether it is one of the equal-latency archs."""

    arch: str
    proxy: float
    standalone: float
    equal_latency: bool
    latency_ms: float


def plot_proxy_vs_standalone(path: str | os.PathLike, points: Sequence[FidelityPoint],
                             title: str) -> Path:
    """Proxy score against stand-alone score, one point per arch: the equal-latency archs
    filled and labelled with their shape, the archs spread over latencies hollow."""
    from matplotlib.figure import Figure  # imported here: most callers never plot

    fig = Figure(figsize=(7.5, 6))  # no pyplot: no global backend or figure registry to manage
    ax = fig.subplots()
    equal = [p for p in points if p.equal_latency]
    spread = [p for p in points if not p.equal_latency]
    if spread:
        ax.scatter([p.proxy for p in spread], [p.standalone for p in spread], s=40,
                   facecolor="none", edgecolor="tab:gray",
                   label=f"archs spread over latencies ({len(spread)})")
    if equal:
        ax.scatter([p.proxy for p in equal], [p.standalone for p in equal], s=50,
                   color="tab:red", label=f"equal-latency archs ({len(equal)}, "
                                          f"{min(p.latency_ms for p in equal):.2f}-"
                                          f"{max(p.latency_ms for p in equal):.2f} ms measured)")
        for p in equal:
            ax.annotate(Arch.parse(p.arch).short(), (p.proxy, p.standalone), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("proxy score (inherited slice fine-tuned as the search does; 0-100)")
    ax.set_ylabel("stand-alone score (extracted, further-trained, fine-tuned;\nmean over seeds; "
                  "archs across latencies: the first seed)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    return path
