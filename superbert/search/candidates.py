"""Candidate enumeration (every grid arch in the latency window) and the candidate files.

Large grids with a large predictor (the paper's step-4 grid is 47.5M KD archs; the original
4-2000x4-1 MLP costs 24 MFLOP an arch, 1e15 FLOP for the grid) use interpolation: the MLP is
evaluated exactly on a sub-lattice, interpolated by cubic splines to the full grid (latency is
smooth in hidden, FFN and qkv at fixed depth), and every arch whose interpolated latency is
within the measured interpolation error (x2) of a window edge is predicted exactly.
`--enumeration exact` predicts every arch; the cost model (`--predictor cost`) is always
predicted exactly (a few flops an arch).

Files: one arch dict per line in the canonical repr; reading accepts any key order, repr or JSON.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.interpolate import CubicSpline

from ..arch import Arch, Scheme, SearchSpace, read_arch_file, unique
from ..errors import UserError
from ..io import atomic_path
from ..latency import LatencyPredictor
from ..progress import Progress
from .window import LatencyWindow

logger = logging.getLogger(__name__)


@dataclass
class CandidateSet:
    """Feasible archs as int arrays in grid order (layers, hidden, heads, qkv, ffn) + latency."""

    layers: np.ndarray
    hidden: np.ndarray
    heads: np.ndarray
    qkv: np.ndarray
    ffn: np.ndarray
    latency_ms: np.ndarray
    exact: np.ndarray  # whether the latency was predicted exactly (else interpolated)
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.layers)

    def archs(self) -> list[Arch]:
        return [Arch(int(L), int(d), int(h), int(q), int(f)) for L, d, h, q, f in
                zip(self.layers, self.hidden, self.heads, self.qkv, self.ffn)]


def _dims(space: SearchSpace) -> tuple[np.ndarray, ...]:
    """Per-dimension grid values: layers, hidden, ffn, attention (qkv), heads per attention."""
    L = np.asarray(space.layer_values(), dtype=np.int64)
    d = np.asarray(space.hidden_values(), dtype=np.int64)
    f = np.asarray(space.ffn_values(), dtype=np.int64)
    if space.scheme == Scheme.KD:
        q = np.asarray(space.qkv_values(), dtype=np.int64)
        h = np.full_like(q, space.kd_heads)
    else:
        h = np.asarray(space.head_values(), dtype=np.int64)
        q = h * space.head_dim
    return L, d, f, q, h


def _features(L, d, f, q) -> np.ndarray:
    return np.stack([d, L, f, q], axis=1).astype(np.float32)


def enumerate_candidates(predictor: LatencyPredictor, space: SearchSpace, window: LatencyWindow,
                         method: str = "auto", chunk: int = 1 << 16,
                         budget_flops: float = 2e12, progress: bool = True) -> CandidateSet:
    """Every grid arch whose predicted latency is in the window (see the module docstring)."""
    if method not in ("auto", "exact", "interp"):
        raise UserError(f"--enumeration must be auto, exact or interp, got {method!r}")
    total = space.size()
    cost = total * predictor.flops_per_prediction()
    if method == "auto":
        method = "exact" if cost <= budget_flops or total < 50_000 else "interp"
    start = time.perf_counter()
    logger.info("enumerating %d archs (%s scheme, steps hidden %d / FFN %d / qkv %d), %s "
                "prediction", total, space.scheme.name, space.hidden_step, space.ffn_step,
                space.qkv_step, method)
    if method == "exact":
        out = _enumerate_exact(predictor, space, window, chunk, progress)
    else:
        out = _enumerate_interp(predictor, space, window, progress)
    out.stats.update(grid=total, method=method, seconds=time.perf_counter() - start,
                     feasible=len(out))
    return out


def _enumerate_exact(predictor, space, window, chunk, progress) -> CandidateSet:
    L, d, f, q, h = _dims(space)
    shape = (len(L), len(d), len(f), len(q))
    total = int(np.prod(shape))
    keep: list[tuple[np.ndarray, np.ndarray]] = []
    bar = Progress(-(-total // chunk), "predicting", unit="chunk", enabled=progress, logger=logger)
    for lo in bar.track(range(0, total, chunk)):
        idx = np.unravel_index(np.arange(lo, min(lo + chunk, total)), shape)
        ms = predictor.predict_features(_features(L[idx[0]], d[idx[1]], f[idx[2]], q[idx[3]]))
        ok = window.contains(ms)
        if ok.any():
            keep.append((np.arange(lo, min(lo + chunk, total))[ok], ms[ok]))
    flat = np.concatenate([k[0] for k in keep]) if keep else np.zeros(0, np.int64)
    ms = np.concatenate([k[1] for k in keep]) if keep else np.zeros(0)
    i = np.unravel_index(flat, shape)
    return CandidateSet(L[i[0]], d[i[1]], h[i[3]], q[i[3]], f[i[2]], ms,
                        np.ones(len(flat), bool), {"predicted": total})


def _sub_indices(n: int, k: int) -> np.ndarray:
    """Every k-th index of 0..n-1, always including the last."""
    idx = np.arange(0, n, k)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def _interp_matrix(values: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Interpolation weights from values[sub] to every value: [len(values), len(sub)].
    Cubic spline (not-a-knot): latency has a d^2 term that linear interpolation
    misses, and the MLP is smooth between its many small ReLU kinks; linear below 4 knots."""
    xs = values[sub].astype(np.float64)
    x = values.astype(np.float64)
    if len(xs) == 1:
        return np.ones((len(values), 1))
    if len(xs) >= 4:
        return CubicSpline(xs, np.eye(len(xs)), axis=0)(x)
    M = np.zeros((len(values), len(sub)))
    j = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
    t = (x - xs[j]) / (xs[j + 1] - xs[j])
    M[np.arange(len(x)), j] = 1.0 - t
    M[np.arange(len(x)), j + 1] = t
    return M


def _enumerate_interp(predictor, space, window, progress,
                      lattice: tuple[int, int, int] | None = None,
                      n_check: int | None = None, safety: float = 2.0) -> CandidateSet:
    """Exact MLP on a sub-lattice, cubic-spline interpolation, exact near the window edges."""
    L, d, f, q, h = _dims(space)
    # Lattice spacing (hidden, FFN, qkv values) and error checks per depth, tuned on the original
    # 4-2000x4-1 MLP: a denser lattice shrinks the band of exact predictions near the window
    # edges but costs lattice predictions; the balance moves with the grid's size.
    big = len(d) * len(f) * len(q) > 1_000_000
    lattice = lattice or ((32, 128, 24) if big else (64, 256, 48))
    n_check = n_check or (2048 if big else 512)
    step_q = space.qkv_step if space.scheme == Scheme.KD else space.head_dim
    kd_ = max(1, lattice[0] // space.hidden_step)
    kf_ = max(1, lattice[1] // space.ffn_step)
    kq_ = max(1, lattice[2] // step_q)
    sd, sf, sq = _sub_indices(len(d), kd_), _sub_indices(len(f), kf_), _sub_indices(len(q), kq_)
    Md, Mf, Mq = _interp_matrix(d, sd), _interp_matrix(f, sf), _interp_matrix(q, sq)
    rng = np.random.default_rng(0)
    parts, stats = [], {"predicted": 0, "lattice": 0, "checked": 0, "band": 0, "margin_ms": []}
    bar = Progress(len(L), "layers", unit="layer", enabled=progress, logger=logger)
    for li in bar.track(range(len(L))):
        Lv = L[li]
        # 1. the exact predictor on the sub-lattice of this depth
        gd, gf, gq = np.meshgrid(d[sd], f[sf], q[sq], indexing="ij")
        lat = predictor.predict_features(
            _features(np.full(gd.size, Lv), gd.ravel(), gf.ravel(), gq.ravel()))
        V = lat.reshape(len(sd), len(sf), len(sq))
        stats["lattice"] += V.size
        # 2. interpolate to the full (d, f, q) grid of this depth
        full = np.einsum("ai,ijk->ajk", Md, V)
        full = np.einsum("bj,ajk->abk", Mf, full)
        full = np.einsum("ck,abk->abc", Mq, full).astype(np.float64)
        # 3. the interpolation error, measured on random grid points near the window edges
        near = np.flatnonzero(((full >= 0.9 * window.lo) & (full <= 1.1 * window.hi)).ravel())
        margin = 0.0
        if len(near):
            pick = rng.choice(near, size=min(n_check, len(near)), replace=False)
            a, b, c = np.unravel_index(pick, full.shape)
            exact = predictor.predict_features(_features(np.full(len(pick), Lv), d[a], f[b], q[c]))
            margin = safety * float(np.max(np.abs(exact - full.ravel()[pick]))) + 1e-6
            stats["checked"] += len(pick)
        stats["margin_ms"].append(round(margin, 4))
        flat = full.ravel()
        inside = (flat >= window.lo + margin) & (flat <= window.hi - margin)
        band = ~inside & (flat >= window.lo - margin) & (flat <= window.hi + margin)
        # 4. exact predictions where the interpolation cannot decide
        bidx = np.flatnonzero(band)
        stats["band"] += len(bidx)
        a, b, c = np.unravel_index(bidx, full.shape)
        bms = predictor.predict_features(_features(np.full(len(bidx), Lv), d[a], f[b], q[c]))
        ok = window.contains(bms)
        ms = flat.copy()
        ms[bidx] = bms
        exact_flag = np.zeros(flat.shape, bool)
        exact_flag[bidx] = True
        accept = inside.copy()
        accept[bidx[ok]] = True
        sel = np.flatnonzero(accept)
        a, b, c = np.unravel_index(sel, full.shape)
        parts.append((np.full(len(sel), Lv), d[a], h[c], q[c], f[b], ms[sel], exact_flag[sel]))
    stats["predicted"] = stats["lattice"] + stats["checked"] + stats["band"]
    cat = [np.concatenate([p[i] for p in parts]) for i in range(7)]
    return CandidateSet(*cat, stats=stats)


# ---- candidate files ---------------------------------------------------------------------------
def _repeated_lists(layers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """"[v, v, ..., v]" (L times) per row, each distinct (L, v) formatted once."""
    keys = layers.astype(np.int64) << 32 | values.astype(np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    text = np.array(["[" + ", ".join([str(k & 0xFFFFFFFF)] * (k >> 32)) + "]" for k in uniq.tolist()],
                    dtype=object)
    return text[inv.reshape(-1)]


def format_candidate_lines(c: CandidateSet, start: int = 0, stop: int | None = None) -> str:
    """Lines in the canonical arch repr (identical to str(Arch)), built column-wise: every
    distinct piece is formatted once and the lines are joined by numpy (millions of lines)."""
    sl = slice(start, len(c) if stop is None else stop)
    L, h, q, d, f = (np.asarray(x[sl]) for x in (c.layers, c.heads, c.qkv, c.hidden, c.ffn))
    if len(L) == 0:
        return ""
    ints = lambda v: np.array([str(x) for x in range(int(v.max()) + 1)], dtype=object)[v]  # noqa: E731
    lines = ("{'sample_layer_num': " + ints(L) + ", 'sample_num_attention_heads': "
             + _repeated_lists(L, h) + ", 'sample_qkv_sizes': " + _repeated_lists(L, q)
             + ", 'sample_hidden_size': " + ints(d) + ", 'sample_intermediate_sizes': "
             + _repeated_lists(L, f) + "}\n")
    return "".join(lines.tolist())


def write_candidates(path: str | os.PathLike, c: CandidateSet, block: int = 200_000) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for i in range(0, len(c), block):
                fh.write(format_candidate_lines(c, i, min(i + block, len(c))))


def read_candidates(path: str | os.PathLike) -> list[Arch]:
    """A candidate / .cands file (any key order, repr or JSON), de-duplicated on the value."""
    archs = read_arch_file(path, "candidate file", missing_hint="make it with --method Candidate")
    if not archs:
        raise UserError(f"candidate file {path} is empty: no arch met the latency constraint "
                        f"when it was made (try another --latency_constraint)")
    return unique(archs)


def check_candidates(path: str | os.PathLike, archs: Sequence[Arch], space: SearchSpace) -> None:
    """Every candidate must lie in the search space: its ranges, its scheme (KD keeps all
    heads, MLM ties qkv to heads) and so the supernet the space was clipped to. One UserError
    naming the file and the first arch outside; every method reads candidates through it."""
    for arch in archs:
        try:
            space.check(arch)
        except UserError as err:
            raise UserError(f"{path}: {err} (candidates must come from this search's space, "
                            f"scheme and supernet: make them with --method Candidate)") from None



