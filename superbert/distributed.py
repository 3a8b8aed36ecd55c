"""torch.distributed set-up for torchrun (env://) and the helpers the scripts share.

One process per device. torchrun (or `python -m torch.distributed.launch`) sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain `python script.py` is a world of
one and never touches torch.distributed. NCCL on GPU, gloo on CPU. Multi-node runs use
torchrun's own rendezvous flags: nothing here launches processes.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(local_rank: int = -1, no_cuda: bool = False,
                     timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group torchrun described in the environment (a no-op when alone).

    `local_rank` is the `--local_rank` flag of `torch.distributed.launch`; the LOCAL_RANK
    variable wins where both are set (torchrun sets only the variable).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", local_rank if local_rank >= 0 else 0)
    use_cuda = torch.cuda.is_available() and not no_cuda
    if world > 1 and use_cuda and local >= torch.cuda.device_count():
        raise UserError(f"local rank {local} has no GPU: only {torch.cuda.device_count()} "
                        f"visible on this node")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return DistEnv(0, 1, local if use_cuda else 0, device, None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise UserError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("process %d/%d (local rank %d) on %s, backend %s", rank, world, local,
                device, backend)
    return DistEnv(rank, world, local, device, backend)


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. creates directories); the others wait, then run it."""
    if not env.is_main:
        barrier(env)
    try:
        yield
    finally:
        if env.is_main:
            barrier(env)


def all_reduce_sum(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place, also returned); identity when alone."""
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(env: DistEnv, obj: object) -> list[object]:
    if not env.distributed:
        return [obj]
    out: list[object] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
