"""Architecture search: Candidate enumeration, Random, Fast, Evolved, and a Pareto (NSGA-II) step.

All methods share the latency window of the original: an arch is feasible when its predicted
latency lies in [0.85, 1.1] x (T_base / speedup), T_base being the BERT-base latency measured
on the machine (recorded in time.pt) rather than the original's hard-coded 886/1063 ms.

- Candidate: every grid arch in the window, predicted in batches. Large grids with a large
  predictor (the paper's step-4 grid is 47.5M KD archs; the original 4-2000x4-1 MLP costs
  24 MFLOP an arch, 1e15 FLOP for the grid) use interpolation: the MLP is evaluated exactly on a
  sub-lattice, interpolated by cubic splines to the full grid (latency is smooth in hidden, FFN
  and qkv at fixed depth), and every arch whose interpolated latency is within the measured
  interpolation error (x2) of a window edge is predicted exactly. `--enumeration exact`
  predicts every arch; the cost model (`--predictor cost`) is always predicted exactly (a few
  flops an arch).
- Random / Fast: sample the generation from the candidate file (Fast first applies the ratio
  rule 1.6d <= f <= 1.9d, 0.7d <= q <= d); lines outside the window are never written.
- Evolved (the original's evolver): population 25, parents = the best 25 of everything
  evaluated so far, each child explored (probability 0.5) from unevaluated candidates or
  mutated from a roulette-chosen parent (weights fitness - min), mutations re-drawn until the
  child is in the window and unevaluated; bounded loops with a clear error when the space is
  exhausted. `--crossover` adds uniform crossover of two parents before mutation.
- Pareto: NSGA-II selection over (predicted latency, fitness) with a latency ceiling.
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .arch import Arch, SearchSpace
from .errors import UserError
from .latency import LatencyPredictor

logger = logging.getLogger(__name__)

# The original searcher's grid steps ("for efficiency") and the paper's fine grid.
ORIGINAL_STEPS = {"hidden_step": 16, "ffn_step": 32, "qkv_step": 12}
FINE_STEPS = {"hidden_step": 4, "ffn_step": 4, "qkv_step": 12}


# ---- the latency window ------------------------------------------------------------------------
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


def is_efficient(arch: Arch) -> bool:
    """The original's Fast rule: 1.6d <= f <= 1.9d and 0.7d <= q <= d."""
    d = arch.hidden
    return 1.6 * d <= arch.ffn <= 1.9 * d and 0.7 * d <= arch.qkv <= d


def efficient_mask(hidden: np.ndarray, ffn: np.ndarray, qkv: np.ndarray) -> np.ndarray:
    return (1.6 * hidden <= ffn) & (ffn <= 1.9 * hidden) & (0.7 * hidden <= qkv) & (qkv <= hidden)


# ---- candidate enumeration ---------------------------------------------------------------------
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
    if space.scheme == "kd":
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
                "prediction", total, space.scheme.upper(), space.hidden_step, space.ffn_step,
                space.qkv_step, method)
    if method == "exact":
        out = _enumerate_exact(predictor, space, window, chunk, progress)
    else:
        out = _enumerate_interp(predictor, space, window, progress)
    out.stats.update(grid=total, method=method, seconds=time.perf_counter() - start,
                     feasible=len(out))
    return out


def _enumerate_exact(predictor, space, window, chunk, progress) -> CandidateSet:
    from tqdm import tqdm

    L, d, f, q, h = _dims(space)
    shape = (len(L), len(d), len(f), len(q))
    total = int(np.prod(shape))
    keep: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in tqdm(range(0, total, chunk), desc="predicting", unit="chunk", disable=not progress):
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
        from scipy.interpolate import CubicSpline

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
    from tqdm import tqdm

    L, d, f, q, h = _dims(space)
    # Lattice spacing (hidden, FFN, qkv values) and error checks per depth, tuned on the original
    # 4-2000x4-1 MLP: a denser lattice shrinks the band of exact predictions near the window
    # edges but costs lattice predictions; the balance moves with the grid's size.
    big = len(d) * len(f) * len(q) > 1_000_000
    lattice = lattice or ((32, 128, 24) if big else (64, 256, 48))
    n_check = n_check or (2048 if big else 512)
    step_q = space.qkv_step if space.scheme == "kd" else space.head_dim
    kd_ = max(1, lattice[0] // space.hidden_step)
    kf_ = max(1, lattice[1] // space.ffn_step)
    kq_ = max(1, lattice[2] // step_q)
    sd, sf, sq = _sub_indices(len(d), kd_), _sub_indices(len(f), kf_), _sub_indices(len(q), kq_)
    Md, Mf, Mq = _interp_matrix(d, sd), _interp_matrix(f, sf), _interp_matrix(q, sq)
    rng = np.random.default_rng(0)
    parts, stats = [], {"predicted": 0, "lattice": 0, "checked": 0, "band": 0, "margin_ms": []}
    for li in tqdm(range(len(L)), desc="layers", unit="layer", disable=not progress):
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
    from superbert.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for i in range(0, len(c), block):
                fh.write(format_candidate_lines(c, i, min(i + block, len(c))))


_KEY_RE = {k: re.compile(rf"['\"]{k}['\"]\s*:\s*(\[[^\]]*\]|-?\d+)") for k in
           ("sample_layer_num", "sample_num_attention_heads", "sample_qkv_sizes",
            "sample_hidden_size", "sample_intermediate_sizes")}


def _fast_parse(line: str) -> Arch | None:
    """Parse a well-formed arch line without literal_eval (large candidate files); None if odd."""
    vals = {}
    for k, rx in _KEY_RE.items():
        m = rx.search(line)
        if m is None:
            return None
        vals[k] = m.group(1)
    try:
        L = int(vals["sample_layer_num"])
        lists = {k: [int(x) for x in v.strip("[]").split(",")] for k, v in vals.items()
                 if k != "sample_layer_num" and k != "sample_hidden_size"}
    except ValueError:
        return None
    if any(len(v) != L or len(set(v)) != 1 for v in lists.values()):
        return None
    return Arch(L, int(vals["sample_hidden_size"]), lists["sample_num_attention_heads"][0],
                lists["sample_qkv_sizes"][0], lists["sample_intermediate_sizes"][0])


def read_candidates(path: str | os.PathLike) -> list[Arch]:
    """A candidate / .cands file (any key order, repr or JSON), de-duplicated on the value."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"candidate file not found: {path} (make it with --method Candidate)") from None
    except OSError as err:
        raise UserError(f"cannot read candidate file {path}: {err}") from None
    archs: list[Arch] = []
    with fh:
        try:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                text = line.split("\t")[0].strip()
                a = _fast_parse(text) if text.count("{") == 1 else None
                if a is None:
                    try:
                        a = Arch.parse(text)
                    except UserError as err:
                        raise UserError(f"{path}:{number}: {err}") from None
                archs.append(a)
        except UnicodeDecodeError as err:
            raise UserError(f"cannot read candidate file {path}: {err}") from None
    if not archs:
        raise UserError(f"candidate file {path} is empty: no arch met the latency constraint "
                        f"when it was made (try another --latency_constraint)")
    seen: set[Arch] = set()
    out = [a for a in archs if not (a in seen or seen.add(a))]
    return out


def write_archs(path: str | os.PathLike, archs: Sequence[Arch]) -> None:
    from superbert.io import atomic_write_text

    atomic_write_text(path, "".join(f"{a}\n" for a in archs))


# ---- Random and Fast ---------------------------------------------------------------------------
def sample_generation(candidates: Sequence[Arch], predictor: LatencyPredictor, window: LatencyWindow,
                      gen_size: int, rng: random.Random, fast: bool = False,
                      exclude: Iterable[Arch] = ()) -> list[Arch]:
    """`gen_size` distinct candidates drawn uniformly among those in the window (and, for
    Fast, passing the ratio rule)."""
    if gen_size < 1:
        raise UserError("--gen_size must be at least 1")
    skip = set(exclude)
    pool = [a for a in candidates if a not in skip and (not fast or is_efficient(a))]
    what = "candidates passing the Fast ratio rule" if fast else "candidates"
    if len(pool) < gen_size:
        raise UserError(f"only {len(pool)} {what}, fewer than --gen_size {gen_size}")
    order = list(range(len(pool)))
    rng.shuffle(order)
    out: list[Arch] = []
    rejected = 0
    pos = 0
    while len(out) < gen_size and pos < len(order):
        take = [pool[i] for i in order[pos:pos + 4 * gen_size]]
        pos += len(take)
        ok = window.contains(predictor.predict(take))
        for a, good in zip(take, ok):
            if good and len(out) < gen_size:
                out.append(a)
            rejected += not good
    if rejected:
        logger.warning("%d candidates outside the latency window were skipped (the candidate "
                       "file was made for another constraint or predictor?)", rejected)
    if len(out) < gen_size:
        raise UserError(f"only {len(out)} {what} lie in the latency window, fewer than "
                        f"--gen_size {gen_size}")
    return out


# ---- Evolved -----------------------------------------------------------------------------------
class MutationGrid:
    """The searcher grid of each coordinate, for index moves (off-grid values snap to the nearest)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.layers = space.layer_values()
        self.hidden = space.hidden_values()
        self.ffn = space.ffn_values()
        self.heads = space.head_values()
        self.qkv = space.qkv_values()

    @staticmethod
    def move(values: list[int], value: int, offset: int) -> int:
        if offset == 0:
            return value
        i = int(np.argmin([abs(v - value) for v in values])) + offset
        return values[i] if 0 <= i < len(values) else value  # out of range: unchanged

    def mutate(self, a: Arch, rng: random.Random, prob: float) -> Arch:
        """The original's mutation: layers p, hidden 2p (+-1), FFN 2p (+-2), heads/qkv p (+-2)."""
        L, d, h, q, f = a.layers, a.hidden, a.heads, a.qkv, a.ffn
        if rng.random() < prob:
            L = self.move(self.layers, L, rng.choice([-1, 0, 1]))
        if rng.random() < 2 * prob:
            d = self.move(self.hidden, d, rng.choice([-1, 0, 1]))
        if rng.random() < 2 * prob:
            f = self.move(self.ffn, f, rng.choice([-2, -1, 0, 1, 2]))
        if rng.random() < prob:
            if self.space.scheme == "mlm":
                h = self.move(self.heads, h, rng.choice([-2, -1, 0, 1, 2]))
                q = self.space.head_dim * h
            else:
                q = self.move(self.qkv, q, rng.choice([-2, -1, 0, 1, 2]))
                h = self.space.kd_heads
        return Arch(L, d, h, q, f)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover per coordinate (heads and qkv travel together)."""
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        h, q = (a.heads, a.qkv) if rng.random() < 0.5 else (b.heads, b.qkv)
        return Arch(pick(a.layers, b.layers), pick(a.hidden, b.hidden), h, q, pick(a.ffn, b.ffn))


def roulette(fitness: Sequence[float], rng: random.Random) -> int:
    """Index drawn with probability proportional to fitness - min (all equal: the first)."""
    w = np.asarray(fitness, dtype=np.float64) - float(np.min(fitness))
    total = float(w.sum())
    if total <= 0:
        return 0
    r = rng.random() * total
    return int(min(np.searchsorted(np.cumsum(w), r, side="right"), len(w) - 1))


@dataclass
class Evolver:
    predictor: LatencyPredictor
    space: SearchSpace
    window: LatencyWindow
    candidates: Sequence[Arch]
    evaluated: dict[Arch, float]  # arch -> fitness (0-100)
    rng: random.Random
    population: int = 25
    parent_size: int = 25
    explore_rate: float = 0.5
    prob_m: float = 0.25
    crossover_rate: float = 0.0
    mutation_tries: int = 200

    def __post_init__(self) -> None:
        if not self.evaluated:
            raise UserError("the results file holds no evaluated arch to evolve from")
        if not 0 <= self.explore_rate <= 1 or not 0 <= self.crossover_rate <= 1:
            raise UserError("--explore_rate and --crossover must be probabilities in [0, 1]")
        if self.population < 1:
            raise UserError("--gen_size must be at least 1")
        self.grid = MutationGrid(self.space)
        ranked = sorted(self.evaluated.items(), key=lambda kv: -kv[1])
        self.parents = [a for a, _ in ranked[: self.parent_size]]
        self.parent_fitness = [s for _, s in ranked[: self.parent_size]]
        self._explore = None

    def _feasible(self, a: Arch) -> bool:
        return bool(self.window.contains(self.predictor.predict_one(a)))

    def _explore_pool(self) -> list[Arch]:
        if self._explore is None:
            pool = [a for a in self.candidates if a not in self.evaluated]
            self.rng.shuffle(pool)
            self._explore = pool
        return self._explore

    def explore(self, taken: set[Arch]) -> Arch | None:
        pool = self._explore_pool()
        while pool:
            a = pool.pop()
            if a not in taken and self._feasible(a):
                return a
        return None

    def mutate_from(self, parent: Arch, taken: set[Arch]) -> Arch | None:
        """Re-draw mutations of `parent` until one is in the window, unevaluated and new."""
        for _ in range(self.mutation_tries):
            base = parent
            if self.crossover_rate and self.rng.random() < self.crossover_rate and len(self.parents) > 1:
                other = self.parents[roulette(self.parent_fitness, self.rng)]
                base = self.grid.crossover(parent, other, self.rng)
            child = self.grid.mutate(base, self.rng, self.prob_m)
            if child in self.evaluated or child in taken:
                continue
            if self.space.contains(child) and self._feasible(child):
                return child
        return None

    def next_generation(self) -> list[Arch]:
        children: list[Arch] = []
        taken: set[Arch] = set()
        dead_parents: set[int] = set()
        attempts = 0
        limit = 50 * self.population + 100
        while len(children) < self.population:
            attempts += 1
            if attempts > limit:
                break
            child = None
            explore_left = self._explore is None or bool(self._explore)
            mutate_left = len(dead_parents) < len(self.parents)
            if not explore_left and not mutate_left:
                break
            if explore_left and (not mutate_left or self.rng.random() < self.explore_rate):
                child = self.explore(taken)
            else:
                weights = [0.0 if i in dead_parents else s for i, s in enumerate(self.parent_fitness)]
                live = [i for i in range(len(self.parents)) if i not in dead_parents]
                i = roulette([weights[j] for j in live], self.rng)
                pi = live[i]
                child = self.mutate_from(self.parents[pi], taken)
                if child is None:
                    dead_parents.add(pi)
                    logger.info("parent %s has no unevaluated feasible mutant left",
                                self.parents[pi].short())
            if child is not None and child not in taken:
                taken.add(child)
                children.append(child)
        if len(children) < self.population:
            raise UserError(f"the search space is exhausted: only {len(children)} of "
                            f"{self.population} new archs in the latency window could be found "
                            f"(every candidate is evaluated and no parent has an unevaluated "
                            f"feasible mutant)")
        return children


# ---- Pareto (NSGA-II) --------------------------------------------------------------------------
def non_dominated_sort(latency: np.ndarray, fitness: np.ndarray) -> list[list[int]]:
    """Fronts of (minimise latency, maximise fitness), best first."""
    n = len(latency)
    dominated_by = [[] for _ in range(n)]
    count = np.zeros(n, int)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if (latency[i] <= latency[j] and fitness[i] >= fitness[j]
                    and (latency[i] < latency[j] or fitness[i] > fitness[j])):
                dominated_by[i].append(j)
            elif (latency[j] <= latency[i] and fitness[j] >= fitness[i]
                  and (latency[j] < latency[i] or fitness[j] > fitness[i])):
                count[i] += 1
    fronts = [[i for i in range(n) if count[i] == 0]]
    while fronts[-1]:
        nxt = []
        for i in fronts[-1]:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        fronts.append(nxt)
    return fronts[:-1]


def crowding(latency: np.ndarray, fitness: np.ndarray, front: list[int]) -> dict[int, float]:
    dist = {i: 0.0 for i in front}
    for obj in (latency, fitness):
        order = sorted(front, key=lambda i: obj[i])
        span = float(obj[order[-1]] - obj[order[0]]) or 1.0
        dist[order[0]] = dist[order[-1]] = math.inf
        for k in range(1, len(order) - 1):
            dist[order[k]] += float(obj[order[k + 1]] - obj[order[k - 1]]) / span
    return dist


class ParetoEvolver(Evolver):
    """NSGA-II: parents by binary tournament on (front rank, crowding distance) over all
    evaluated archs; children by crossover + mutation under a latency ceiling (window hi)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        archs = list(self.evaluated)
        lat = self.predictor.predict(archs)
        fit = np.asarray([self.evaluated[a] for a in archs])
        self.fronts = non_dominated_sort(lat, fit)
        rank, crowd = {}, {}
        for r, front in enumerate(self.fronts):
            for i, c in crowding(lat, fit, front).items():
                rank[i], crowd[i] = r, c
        self.all_archs, self.rank, self.crowd = archs, rank, crowd
        self.front_archs = [archs[i] for i in self.fronts[0]]
        if not self.crossover_rate:
            self.crossover_rate = 0.9

    def _feasible(self, a: Arch) -> bool:
        return bool(self.predictor.predict_one(a) <= self.window.hi)

    def tournament(self) -> Arch:
        i, j = self.rng.randrange(len(self.all_archs)), self.rng.randrange(len(self.all_archs))
        better = i if (self.rank[i], -self.crowd[i]) <= (self.rank[j], -self.crowd[j]) else j
        return self.all_archs[better]

    def next_generation(self) -> list[Arch]:
        children: list[Arch] = []
        taken: set[Arch] = set()
        for _ in range(50 * self.population + 100):
            if len(children) >= self.population:
                break
            a, b = self.tournament(), self.tournament()
            base = self.grid.crossover(a, b, self.rng) if self.rng.random() < self.crossover_rate else a
            for _ in range(self.mutation_tries):
                child = self.grid.mutate(base, self.rng, self.prob_m)
                if child not in self.evaluated and child not in taken and \
                        self.space.contains(child) and self._feasible(child):
                    taken.add(child)
                    children.append(child)
                    break
        if len(children) < self.population:
            raise UserError(f"the search space is exhausted: only {len(children)} of "
                            f"{self.population} new archs under the latency ceiling "
                            f"{self.window.hi:.2f} ms")
        return children


# ---- plots -------------------------------------------------------------------------------------
def plot_generation(path: str | os.PathLike, evaluated: dict[Arch, float], predictor: LatencyPredictor,
                    window: LatencyWindow, parents: Sequence[Arch] = (),
                    children: Sequence[Arch] = (), front: Sequence[Arch] = ()) -> None:
    """Fitness vs predicted latency of everything evaluated, the window, parents, the front,
    and the new generation (drawn at the bottom: not evaluated yet)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from superbert.io import atomic_path

    archs = list(evaluated)
    lat = predictor.predict(archs)
    fit = np.asarray([evaluated[a] for a in archs])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
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
    plt.close(fig)


# ---- measuring searched archs for real ---------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    arch: Arch
    predicted_ms: float
    measured_ms: float
    predicted_speedup: float
    measured_speedup: float


def measure_archs(archs: Sequence[Arch], predictor: LatencyPredictor, config: Any, scheme: str,
                  protocol: Any = None, progress: bool = True) -> tuple[float, list[Measured]]:
    """Time the predictor's reference arch (BERT-base unless the latency dataset recorded
    another) and `archs` now, on this machine; speedups measured vs predicted. The reference is
    timed before and after the archs (mean of both) so slow drift cancels."""
    from tqdm import tqdm

    from .latency import Timer, TimingProtocol

    if protocol is None:
        saved = ((predictor.meta.get("timing") or {}).get("protocol") or {})
        protocol = TimingProtocol(**{k: v for k, v in saved.items()
                                     if k in TimingProtocol.__dataclass_fields__})
    timer = Timer(config, scheme, protocol)
    reference = reference_arch(predictor)
    before = timer.time_reference(reference).ms
    timed = [(a, timer.time(a).ms)
             for a in tqdm(archs, desc="measuring", unit="arch", disable=not progress)]
    base = (before + timer.time(reference).ms) / 2
    pred_base = predictor.base_latency_ms or base
    out = []
    for a, ms in timed:
        p = predictor.predict_one(a)
        out.append(Measured(a, p, ms, pred_base / p, base / ms))
    return base, out


# ---- the command line's library side -----------------------------------------------------------
def space_from_args(args: Any, scheme: str, steps: dict[str, int]) -> SearchSpace:
    config = None
    if getattr(args, "bert_model", None):
        from .hf import load_config, resolve_model_dir

        config = load_config(resolve_model_dir(args.bert_model), scheme)
    ranges = dict(layers=tuple(args.layer_num_space), hidden=tuple(args.hidden_size_space),
                  qkv=tuple(args.qkv_size_space), heads=tuple(args.head_num_space),
                  ffn=tuple(args.intermediate_size_space))
    if config is not None:
        space = SearchSpace.for_supernet(config, scheme, **ranges, **steps)
        space.validate_against(config)
        return space
    return SearchSpace(scheme=scheme, **ranges, **steps)


def load_predictor(args: Any, scheme: str | None) -> LatencyPredictor:
    return LatencyPredictor.load(args.ckpt_path, feature_norm=args.feature_norm,
                                 lat_norm=args.lat_norm,
                                 base_latency_ms=getattr(args, "base_latency", None), scheme=scheme,
                                 feature_dim=args.feature_dim, hidden_dim=args.hidden_dim,
                                 hidden_layer_num=args.hidden_layer_num)


def window_from_args(args: Any, predictor: LatencyPredictor) -> LatencyWindow:
    return LatencyWindow(predictor.base_latency_ms, args.latency_constraint,
                         getattr(args, "lat_min_ratio", 0.85), getattr(args, "lat_max_ratio", 1.1),
                         base_name="BERT-base" if getattr(args, "base_latency", None)
                         else reference_name(predictor))


def reference_arch(predictor: LatencyPredictor) -> Arch:
    """The arch whose latency time.pt records as the base: BERT-base, or the custom reference
    the latency dataset was timed against (`inference_time_evaluation.py --base_arch`)."""
    from .latency import BERT_BASE

    recorded = (predictor.meta.get("timing") or {}).get("base_arch")
    try:
        return Arch.parse(recorded) if recorded else BERT_BASE
    except UserError:
        return BERT_BASE


def reference_name(predictor: LatencyPredictor) -> str:
    from .latency import BERT_BASE

    arch = reference_arch(predictor)
    return "BERT-base" if arch == BERT_BASE else f"the reference {arch.short()}"


def candidates_command(args: Any, scheme: str | None, hidden_step: int, ffn_step: int,
                       qkv_step: int) -> CandidateSet:
    predictor = load_predictor(args, scheme)
    scheme = predictor.scheme or "mlm"
    space = space_from_args(args, scheme, dict(hidden_step=hidden_step, ffn_step=ffn_step,
                                               qkv_step=qkv_step))
    window = window_from_args(args, predictor)
    logger.info("predictor %s: %s", args.ckpt_path, predictor.describe())
    logger.info("window: %s", window.describe())
    cands = enumerate_candidates(predictor, space, window, getattr(args, "enumeration", "auto"),
                                 progress=not getattr(args, "no_progress", False))
    if not len(cands):
        raise UserError(f"no arch of the {space.size()}-arch grid meets a {args.latency_constraint:g}x "
                        f"speedup ({window.describe()}); nothing written")
    write_candidates(args.candidate_file, cands)
    s = cands.stats
    logger.info("%d of %d archs in the window -> %s (%.1f s, %s; %d predictor calls)",
                len(cands), s["grid"], args.candidate_file, s["seconds"], s["method"], s["predicted"])
    return cands


def search_command(args: Any) -> list[Arch] | CandidateSet:
    """searcher.py: one method, files in the original's formats."""
    from .results import fitness, parse_results

    method = args.method.lower()
    scheme = args.model.lower() if args.model else None
    steps = dict(FINE_STEPS if args.fine_grid else ORIGINAL_STEPS)
    for k in steps:
        if getattr(args, k, None):
            steps[k] = getattr(args, k)
    if method == "candidate":
        if not args.candidate_file:
            raise UserError("--method Candidate needs --candidate_file (where to write them)")
        return candidates_command(args, scheme, **steps)
    predictor = load_predictor(args, scheme)
    scheme = predictor.scheme or "mlm"
    window = window_from_args(args, predictor)
    space = space_from_args(args, scheme, steps)
    rng = random.Random(args.seed)
    if not args.candidate_file:
        raise UserError(f"--method {args.method} needs --candidate_file (from --method Candidate)")
    candidates = read_candidates(args.candidate_file)
    evaluated: dict[Arch, float] = {}
    parents: list[Arch] = []
    front: list[Arch] = []
    if method in ("random", "fast"):
        children = sample_generation(candidates, predictor, window, args.gen_size, rng,
                                     fast=method == "fast")
    elif method in ("evolved", "pareto"):
        if not args.arch_perfs_file:
            raise UserError(f"--method {args.method} needs --arch_perfs_file (subbert.results)")
        scores = parse_results(args.arch_perfs_file)
        evaluated = {a: fitness(s) for a, s in scores.items()}
        cls = ParetoEvolver if method == "pareto" else Evolver
        evo = cls(predictor, space, window, candidates, evaluated, rng, population=args.gen_size,
                  parent_size=25, explore_rate=args.explore_rate, crossover_rate=args.crossover)
        parents = evo.parents
        front = getattr(evo, "front_archs", [])
        best = max(evaluated.items(), key=lambda kv: kv[1])
        logger.info("%d archs evaluated; best fitness %.3f: %s", len(evaluated), best[1], best[0])
        children = evo.next_generation()
    else:
        raise UserError(f"unknown --method {args.method!r}: Candidate, Random, Fast, Evolved or Pareto")
    logger.info("%d candidates; window: %s", len(candidates), window.describe())
    write_archs(args.output_file, children)
    lat = predictor.predict(children)
    logger.info("wrote %d archs to %s (predicted %.2f..%.2f ms, speedup %.2fx..%.2fx)",
                len(children), args.output_file, lat.min(), lat.max(),
                window.base_ms / lat.max(), window.base_ms / lat.min())
    if args.plot:
        if evaluated:
            plot_generation(args.plot, evaluated, predictor, window, parents, children, front)
        else:
            plot_generation(args.plot, {a: 0.0 for a in children}, predictor, window)
        logger.info("plot: %s", args.plot)
    if args.measure:
        if evaluated:
            ranked = sorted(evaluated, key=lambda a: -evaluated[a])
            to_time = ranked[: args.measure]
            what = "best evaluated"
        else:
            to_time = children[: args.measure]
            what = "written"
        config = _timing_config(args, scheme)
        base, rows = measure_archs(to_time, predictor, config, scheme,
                                   progress=not args.no_progress)
        print(f"measured on this machine: {window.base_name} {base:.2f} ms (time.pt records "
              f"{predictor.base_latency_ms:.2f} ms); {what} archs:")
        lo_s, hi_s = window.base_ms / window.hi, window.base_ms / window.lo
        print(f"{'arch':<28} {'pred ms':>9} {'meas ms':>9} {'pred x':>7} {'meas x':>7}  "
              f"target {lo_s:.2f}x..{hi_s:.2f}x")
        for m in rows:
            inside = lo_s <= m.measured_speedup <= hi_s
            print(f"{m.arch.short():<28} {m.predicted_ms:9.2f} {m.measured_ms:9.2f} "
                  f"{m.predicted_speedup:7.2f} {m.measured_speedup:7.2f}  "
                  f"{'in window' if inside else 'OUTSIDE'}")
    return children


def _timing_config(args: Any, scheme: str):
    from .latency import load_supernet_config

    config, _, _ = load_supernet_config(getattr(args, "bert_model", None),
                                        mlm=scheme == "mlm", kd=scheme == "kd")
    return config
