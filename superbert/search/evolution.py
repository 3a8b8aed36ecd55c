"""Random, Fast and Evolved: the next generation from the candidates (and the results).

- Random / Fast: sample the generation from the candidate file (Fast first applies the ratio
  rule 1.6d <= f <= 1.9d, 0.7d <= q <= d); lines outside the window are never written.
- Evolved (the original's evolver): population 25, parents = the best 25 of everything
  evaluated so far, each child explored (probability 0.5) from unevaluated candidates or
  mutated from a roulette-chosen parent (weights fitness - min), mutations re-drawn until the
  child is in the window and unevaluated; bounded loops with a clear error when the space is
  exhausted. `--crossover` adds uniform crossover of two parents before mutation.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..arch import Arch, Scheme, SearchSpace
from ..errors import UserError
from ..latency import LatencyPredictor
from .window import LatencyWindow

logger = logging.getLogger(__name__)


def is_efficient(arch: Arch) -> bool:
    """The original's Fast rule: 1.6d <= f <= 1.9d and 0.7d <= q <= d."""
    d = arch.hidden
    return 1.6 * d <= arch.ffn <= 1.9 * d and 0.7 * d <= arch.qkv <= d


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
            if self.space.scheme == Scheme.MLM:
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
