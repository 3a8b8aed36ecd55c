"""Which archs and which examples a pre-training step sees: the per-step arch seeds (the same on
every rank, independent of the world size) and a distributed sampler that can resume part-way
through an epoch."""
from __future__ import annotations

import random
from typing import Iterator

from torch.utils.data import Dataset, DistributedSampler

from ..arch import Arch, SearchSpace
from .config import PretrainConfig


# ---- arch sampling -----------------------------------------------------------------------------
def arch_seed(seed: int, step: int, index: int, per_step: int) -> int:
    """Seed of the `index`-th arch of optimizer step `step`: the same on every rank and for
    any world size (the original used `step * world_size + index`, which ties the archs to the
    GPU count and overlaps between steps)."""
    return seed * 1_000_003 + step * per_step + index


def step_archs(space: SearchSpace | None, fixed: Arch | None, step: int, cfg: PretrainConfig) -> list[Arch]:
    """The archs run on every micro-batch of optimizer step `step` (largest first)."""
    if fixed is not None:
        return [fixed]
    if cfg.num_subnets is not None and cfg.num_subnets > 1:
        # Largest and smallest, then K-2 random ones (seeded by their index like the rest).
        n = cfg.num_subnets - 2
        return [space.largest(), space.smallest()] + [
            space.sample(random.Random(arch_seed(cfg.seed, step, k, n))) for k in range(n)]
    n = 1 if cfg.num_subnets == 1 else cfg.sample_times_per_batch
    archs = [space.sample(random.Random(arch_seed(cfg.seed, step, k, n))) for k in range(n)]
    if cfg.sandwich:
        archs = [space.largest(), space.smallest()] + archs
    return archs


# ---- data --------------------------------------------------------------------------------------
class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler whose epoch can start part-way (exact resume of the data order).

    With one replica this is a seeded shuffler, and 2 ranks with batch B see exactly the
    examples 1 rank with batch 2B sees in each step (rank r takes every world-th index).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
