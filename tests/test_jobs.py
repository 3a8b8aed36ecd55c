"""Sharing evaluation jobs between processes: shard specs, the environment, the locked append."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from superbert.arch import Arch
from superbert.errors import UserError
from superbert.jobs import (Shard, locked_append, make_jobs, parse_shard, resolve_shard,
                           share_of_jobs, shared_lock)
from superbert.results import TaskResult, format_results_block, read_results


def test_parse_shard_accepts_i_of_n():
    assert parse_shard("0/1") == Shard(0, 1, "--shard")
    assert parse_shard(" 3 / 4 ") == Shard(3, 4, "--shard")


@pytest.mark.parametrize("text", ["3/2", "0/0", "2/2", "-1/2", "1", "a/b", "1/2/3", ""])
def test_bad_shard_specs_are_user_errors(text):
    with pytest.raises(UserError):
        parse_shard(text)


@given(n=st.integers(1, 12), count=st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_shares_partition_the_jobs(n, count):
    items = list(range(n))
    shares = [Shard(i, count).take(items) for i in range(count)]
    assert sorted(x for s in shares for x in s) == items


@given(archs=st.integers(1, 9), tasks=st.integers(1, 4), seeds=st.integers(1, 3),
       count=st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_job_shares_partition_and_balance_every_task(archs, tasks, seeds, count):
    """Each share holds about 1/N of every task's jobs and compute (a 2-task list dealt in
    arch-task order would hand one task to each of 2 shares), in the evaluator's order."""
    arch_list = [Arch(1 + a % 3, 32 * (a + 1), 1, 32, 64) for a in range(archs)]
    jobs = make_jobs(arch_list, [f"task{t}" for t in range(tasks)], range(seeds))
    shares = [share_of_jobs(Shard(i, count), jobs) for i in range(count)]
    min_flops = [min(sum(j.arch.flops() for j in s if j.task == f"task{t}") for s in shares)
                 for t in range(tasks)]
    assert sorted(j for s in shares for j in s) == sorted(jobs)
    for share in shares:
        assert share == [j for j in jobs if j in share]  # evaluator's order kept
        for t in range(tasks):
            flops = sum(j.arch.flops() for j in share if j.task == f"task{t}")
            # greedy costliest-first: no share ends more than one job's work above the lightest
            assert flops <= min_flops[t] + max(a.flops() for a in arch_list)


def test_environment_resolution_order():
    assert resolve_shard(None, {}) == Shard()
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "5"}
    assert resolve_shard(None, torchrun) == Shard(1, 2, "torchrun rank")
    assert resolve_shard("0/3", torchrun) == Shard(0, 3, "--shard")
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_shard(None, slurm) == Shard(2, 4, "SLURM array")
    # a single-process torchrun is the whole list
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) == Shard()
    with pytest.raises(UserError):
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "1"})
    with pytest.raises(UserError):
        resolve_shard(None, {"WORLD_SIZE": "x"})


def test_job_order_is_seed_arch_task():
    a, b = Arch(1, 64, 2, 64, 128), Arch(2, 64, 2, 64, 128)
    jobs = make_jobs([a, b], ["mnli", "squad"], [1, 2])
    assert [(j.seed, j.arch, j.task) for j in jobs[:3]] == [(1, a, "mnli"), (1, a, "squad"),
                                                          (1, b, "mnli")]
    assert len(jobs) == 8


APPENDER = textwrap.dedent("""
    import sys
    from superbert.arch import Arch
    from superbert.jobs import locked_append
    from superbert.results import TaskResult, format_results_block
    path, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        arch = Arch(1 + who, 64 + 16 * (i % 50), 2, 64, 128 + 32 * (i // 50))
        r = TaskResult(task="mnli", arch=arch, param_count=i, best=i / 1000, em=None,
                       time_per_batch_infer_ms=1.0, infer_cnt=i)
        # padding makes each block several KB, so an unlocked writer would interleave
        locked_append(path, format_results_block(r).replace("infer_cnt", "x = " + "y" * 4000 + "\\ninfer_cnt"))
""")


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "subbert.results"
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w), str(n)])
             for w in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    results = read_results(str(path))
    assert len(results) == 2 * n
    keys = {(r.arch, r.param_count) for r in results}
    assert len(keys) == 2 * n  # every block present once


def test_locked_append_writes_whole_text(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    r = TaskResult(task="sst-2", arch=Arch(1, 64, 2, 64, 128), param_count=1, best=0.5, em=None,
                   time_per_batch_infer_ms=1.0, infer_cnt=1)
    locked_append(path, format_results_block(r))
    locked_append(path, format_results_block(r))
    assert len(read_results(str(path))) == 2


def test_readers_wait_for_a_writer(tmp_path):
    """shared_lock blocks while another holder has the exclusive lock locked_append takes."""
    import fcntl
    import os
    import threading

    path = tmp_path / "subbert.results"
    path.write_text("")
    fd = os.open(path, os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    entered = threading.Event()

    def reader():
        with shared_lock(path):
            entered.set()

    t = threading.Thread(target=reader)
    t.start()
    assert not entered.wait(0.3)  # held off by the writer
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    assert entered.wait(10)
    t.join()
    with shared_lock(tmp_path / "missing"):  # nothing to lock: no error
        pass
