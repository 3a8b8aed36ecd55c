"""Candidate evaluation as a list of jobs that many processes share without talking to each other.

A job is one (arch, task, seed) fine-tuning. Every process builds the same job list from the
same command line and takes its share (`share_of_jobs`): each task's jobs are dealt on their
own, the costliest arch first (encoder FLOPs), each to the share with the least of that task's
work so far (fewest jobs in all on a tie), so every share holds an equal part (+-1 job) of
every task and about as much compute. Dealt in the evaluator's seed-arch-task order instead (job
i to share i mod N), a 2-task list would give one task to each of 2 shares. The share comes
from, in order:

- `--shard I/N` on the command line (0 <= I < N);
- torchrun's RANK / WORLD_SIZE (one share per rank, on device LOCAL_RANK);
- a SLURM job array: SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, out of SLURM_ARRAY_TASK_COUNT;
- otherwise the whole list.

No process group is needed: a job's share depends only on its index, never on timing, and a
job's fine-tuning is seeded by its own seed on a fresh copy of the arch's inherited weights, so
it scores the same whoever runs it and whatever ran before it. Results go
to one file that every process appends to under an exclusive lock (`locked_append`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, TypeVar

from .arch import Arch
from .errors import UserError

T = TypeVar("T")

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Job:
    """One fine-tuning to run: an arch on a task with a seed."""

    arch: Arch
    task: str
    seed: int


@dataclass(frozen=True)
class Shard:
    """This process's share: index `index` of `count` (0-based)."""

    index: int = 0
    count: int = 1
    source: str = "whole list"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"shard {self.index}/{self.count} does not exist: the index must be "
                            f"0 <= I < N (N >= 1)")

    def take(self, items: Sequence[T]) -> list[T]:
        """Item i belongs to share i mod N (jobs are dealt by `share_of_jobs`)."""
        return [x for i, x in enumerate(items) if i % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count} ({self.source})"


def parse_shard(text: str) -> Shard:
    """`I/N` -> Shard(I, N); anything else is a UserError."""
    m = _SHARD_RE.match(text)
    if not m:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of 4 shares")
    return Shard(int(m.group(1)), int(m.group(2)), "--shard")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(flag: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """This process's share: --shard, else torchrun's RANK/WORLD_SIZE, else a SLURM array."""
    env = os.environ if env is None else env
    if flag:
        return parse_shard(flag)
    world = _env_int(env, "WORLD_SIZE")
    if world is not None and world > 1:
        rank = _env_int(env, "RANK")
        if rank is None:
            raise UserError("WORLD_SIZE is set but RANK is not: launch with torchrun")
        return Shard(rank, world, "torchrun rank")
    task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task_id is not None:
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        if count is None:
            raise UserError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        return Shard((task_id - lo) // step, count, "SLURM array")
    return Shard()


def share_of_jobs(shard: Shard, jobs: Sequence[Job]) -> list[Job]:
    """`shard`'s jobs, dealt task by task by cost (see the module docstring), in the
    evaluator's order. A pure function of the job list: every process computes the same deal."""
    owner: dict[int, int] = {}
    count = [0] * shard.count
    tasks = list(dict.fromkeys(job.task for job in jobs))
    for task in tasks:
        mine = [i for i, job in enumerate(jobs) if job.task == task]
        mine.sort(key=lambda i: -jobs[i].arch.flops())  # stable: ties keep the job order
        load = [0] * shard.count
        for i in mine:
            s = min(range(shard.count), key=lambda k: (load[k], count[k], k))
            owner[i] = s
            load[s] += jobs[i].arch.flops()
            count[s] += 1
    return [job for i, job in enumerate(jobs) if owner[i] == shard.index]


def make_jobs(archs: Iterable[Arch], tasks: Iterable[str], seeds: Iterable[int]) -> list[Job]:
    """The job list in the evaluator's order: seed, then arch, then task."""
    tasks = list(tasks)
    archs = list(archs)
    return [Job(a, t, s) for s in seeds for a in archs for t in tasks]


def locked_append(path: str | os.PathLike, text: str) -> None:
    """Append `text` whole under an exclusive lock, flushed and synced: processes appending to
    the same file never interleave or cut each other's blocks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = text.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold a shared lock on `path` (if it exists) while reading it: a reader then never sees
    half of a block that `locked_append` is writing (a SLURM array task that starts while
    others append, a resumed rank)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
