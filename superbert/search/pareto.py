"""Pareto: NSGA-II selection over (predicted latency, fitness) under a latency ceiling."""
from __future__ import annotations

import math

import numpy as np

from ..arch import Arch
from ..errors import UserError
from .evolution import Evolver


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
