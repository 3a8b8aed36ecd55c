"""Candidate evaluation shared between processes: torchrun ranks and --shard processes write the
blocks one process writes, a killed run resumes with only its missing jobs, and bad shares or
foreign results files are one error line."""
from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import make_tiny_supernet
from superbert.arch import Arch, format_arch_lines
from superbert.errors import UserError
from superbert.finetuning.config import RunConfig
from superbert.finetuning.run import run
from superbert.results import TaskResult, format_results_block, read_results
from test_tasks import write_glue_task

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "superbert_run_en_classifier.py"
ARCHS = [Arch(1, 24, 1, 16, 32), Arch(2, 32, 2, 32, 64), Arch(1, 32, 2, 32, 48)]
SEEDS = "1 2"
N_JOBS = len(ARCHS) * 2 * 2  # archs x tasks x seeds
PROXY = ["--max_seq_length", "64", "--train_batch_size", "8", "--eval_batch_size", "5",
         "--max_steps", "3", "--eval_step", "2", "--learning_rate", "1e-3", "--do_lower_case",
         "--no_cuda"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for _var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
    ENV.pop(_var, None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cluster")
    supernet = make_tiny_supernet(root / "mlm", "mlm", layers=2, hidden=32, heads=2, ffn=64,
                                  max_positions=128)
    mnli = write_glue_task(root / "MNLI", "mnli", n_train=24, n_dev=10)
    rte = write_glue_task(root / "RTE", "rte", n_train=16, n_dev=8, seed=1)
    cands = root / "gen.cands"
    cands.write_text(format_arch_lines(ARCHS))
    return {"root": root, "supernet": supernet, "mnli": mnli, "rte": rte, "cands": cands}


def args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--data_dir", f"{setup['mnli']} {setup['rte']}", "--task_name", "mnli rte",
            "--model", str(setup["supernet"]), "--arches_file", str(setup["cands"]),
            "--seed", SEEDS, "--output_dir", str(out), *PROXY, *extra]


def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env or ENV)


def blocks(path: Path) -> list[tuple]:
    """What must not depend on who ran a job: everything but the timing."""
    return sorted((r.task, str(r.arch), r.seed, r.best, r.em, r.param_count, r.infer_cnt)
                  for r in read_results(path))


@pytest.fixture(scope="module")
def reference(setup) -> list[tuple]:
    """One process, every job."""
    out = setup["root"] / "one"
    r = cli(*args(setup, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluating 12 jobs (3 arch(s) x 2 task(s) x 2 seed(s))" in r.stderr
    got = blocks(out / "subbert.results")
    assert len(got) == N_JOBS and len(set(got)) == N_JOBS
    assert {b[2] for b in got} == {1, 2}  # the seed line, read back
    return got


def test_two_shard_processes_equal_one_process(setup, reference):
    out = setup["root"] / "shards"
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), *args(setup, out, "--shard", f"{i}/2")],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "share 0/2 (--shard): 6 of them" in logs[0]
    assert blocks(out / "subbert.results") == reference
    # every evaluation of both processes is in the one eval_results.txt, whole
    ev = (out / "eval_results.txt").read_text()
    assert ev.count("global_step = ") == 2 * N_JOBS  # steps 2 and 3 of each job
    mm = (setup["root"] / "shards-MM" / "eval_results.txt").read_text()
    assert mm.count("task = mnli-mm") == 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_equal_one_process(setup, reference):
    out = setup["root"] / "ranks"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                        str(SCRIPT), *args(setup, out)], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "share 1/2 (torchrun rank): 6 of them" in r.stderr
    assert blocks(out / "subbert.results") == reference


def test_killed_run_resumes_with_only_the_missing_jobs(setup, reference):
    out = setup["root"] / "killed"
    results = out / "subbert.results"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args(setup, out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("E*****") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = len(read_results(results))
    assert 2 <= done < N_JOBS, f"the run was not cut in the middle ({done} blocks)"

    r = cli(*args(setup, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{done} of {N_JOBS} jobs already have results in {results}: skipped" in r.stderr
    assert len(re.findall(r"job \d+/\d+ \S+ \S+ seed \d: best", r.stderr)) == N_JOBS - done
    assert blocks(results) == reference  # the same blocks, none twice

    # Once complete, the same command runs nothing (and reads no data).
    again = cli(*args(setup, out))
    assert again.returncode == 0 and "nothing to evaluate" in again.stderr
    assert len(read_results(results)) == N_JOBS


def test_overwrite_results_moves_the_old_file_aside(setup, tmp_path):
    out = tmp_path / "out"
    one_arch = tmp_path / "one.cands"
    one_arch.write_text(format_arch_lines(ARCHS[:1]))
    argv = [*args(setup, out), "--arches_file", str(one_arch), "--seed", "3", "--task_name",
            "rte", "--data_dir", str(setup["rte"])]
    first = run(RunConfig_from(argv))
    assert len(first) == 1
    before = (out / "subbert.results").read_text()
    with pytest.raises(UserError, match="--overwrite_results with 2 shares"):
        run(RunConfig_from([*argv, "--overwrite_results", "--shard", "1/2"]))
    second = run(RunConfig_from([*argv, "--overwrite_results"]))
    assert len(second) == 1 and second[0].best == first[0].best
    (backup,) = out.glob("subbert.results.bak-*")
    assert backup.read_text() == before
    assert len(read_results(out / "subbert.results")) == 1


def RunConfig_from(argv: list[str]) -> RunConfig:  # noqa: N802 (reads as the type it builds)
    from superbert_run_en_classifier import parse_config
    return parse_config(argv)


@pytest.mark.parametrize("spec", ["3/2", "0/0", "1/x"])
def test_bad_shard_is_one_line_exit_2(setup, tmp_path, spec):
    r = cli(*args(setup, tmp_path / "out", "--shard", spec))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ")
    assert "shard" in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_slurm_environment_is_one_line_exit_2(setup, tmp_path):
    r = cli(*args(setup, tmp_path / "out"), env={**ENV, "SLURM_ARRAY_TASK_ID": "3"})
    assert r.returncode == 2 and "SLURM_ARRAY_TASK_COUNT" in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]


def _block(arch: Arch, task: str = "rte", seed: int | None = None) -> str:
    return format_results_block(TaskResult(task, arch, arch.param_count(), 0.5, None, 1.0, 1,
                                           seed=seed))


def test_results_of_another_supernet(setup, tmp_path):
    """A results file is shared by generations: blocks of archs or tasks outside this run are
    kept and ignored; a block of an arch this supernet cannot hold (another supernet's file)
    stops the run with its line, before anything is trained."""
    out = tmp_path / "out"
    out.mkdir()
    results = out / "subbert.results"
    other = Arch(1, 16, 1, 16, 16)  # fits this supernet, not in this run
    foreign = "log noise\n" + _block(other, "sst-2") + _block(other, "rte", seed=7)
    results.write_text(foreign)
    one_arch = tmp_path / "one.cands"
    one_arch.write_text(format_arch_lines(ARCHS[:1]))
    argv = [*args(setup, out), "--arches_file", str(one_arch), "--seed", "3", "--task_name",
            "rte", "--data_dir", str(setup["rte"])]
    res = run(RunConfig_from(argv))
    assert len(res) == 1 and res[0].seed == 3
    text = results.read_text()
    assert text.startswith(foreign) and len(read_results(results)) == 3

    too_big = Arch(3, 32, 2, 32, 64)  # 3 layers: a supernet with more than our 2
    results.write_text(text + _block(too_big))
    r = cli(*argv)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert f"{results}:{text.count(chr(10)) + 1}: this results block is not of this " \
           f"supernet's search space" in r.stderr and "layers 3 exceeds" in r.stderr


def test_blocks_without_seed_count_for_a_single_seed_run(setup, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    arch = ARCHS[0]
    old = _block(arch, "rte")  # the original's block: no seed line
    (out / "subbert.results").write_text(old)
    one_arch = tmp_path / "one.cands"
    one_arch.write_text(format_arch_lines([arch]))
    base = [*args(setup, out), "--arches_file", str(one_arch), "--task_name", "rte",
            "--data_dir", str(setup["rte"])]
    caplog.set_level("INFO", logger="superbert.finetuning")
    assert run(RunConfig_from([*base, "--seed", "5"])) == []
    assert "1 of 1 jobs already have results" in caplog.text
    # with two seeds a seed-less block belongs to neither: both run
    assert [r.seed for r in run(RunConfig_from([*base, "--seed", "5 6"]))] == [5, 6]


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@given(best=finite, em=st.one_of(st.none(), finite),
       seed=st.one_of(st.none(), st.integers(0, 10**6)),
       runtime=st.sampled_from([None, "onnxruntime-fp32", "onnxruntime-int8"]),
       bad=st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"]),
       where=st.sampled_from(["best", "f1", "em"]), before=st.integers(0, 3))
@settings(max_examples=40, deadline=None)
def test_blocks_roundtrip_and_non_finite_scores_name_file_and_line(tmp_path_factory, best, em,
                                                                   seed, runtime, bad, where,
                                                                   before):
    path = tmp_path_factory.mktemp("r") / "subbert.results"
    arch = ARCHS[1]
    r = TaskResult("squad1" if em is not None else "mnli", arch, 7, best, em, 1.5, 3, seed=seed,
                   runtime=runtime)
    path.write_text(format_results_block(r))
    (got,) = read_results(path)
    assert got == r and got.line == 1
    with pytest.raises(ValueError, match="refusing to write"):
        format_results_block(TaskResult("mnli", arch, 7, float(bad), None, 1.0, 1))
    score = {"best": bad, "f1": f"f1: {bad}; em: 1.0", "em": f"f1: 1.0; em: {bad}"}[where]
    damaged = format_results_block(TaskResult("mnli", arch, 7, 0.5, None, 1.0, 1))
    text = format_results_block(r) * before + damaged.replace("best_acc = 0.5",
                                                                f"best_acc = {score}")
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_results(path)
    line = before * len(format_results_block(r).splitlines()) + 5
    assert f"{path}:{line}: the score" in str(err.value) and "not a finite number" in str(err.value)


def test_progress_lines_off_a_terminal(setup, tmp_path, caplog, monkeypatch):
    import superbert.finetuning.loop as loop
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    caplog.set_level("INFO", logger="superbert.finetuning")
    one_arch = tmp_path / "one.cands"
    one_arch.write_text(format_arch_lines(ARCHS[:1]))
    run(RunConfig_from([*args(setup, tmp_path / "out"), "--arches_file", str(one_arch),
                        "--seed", "3", "--task_name", "rte", "--data_dir", str(setup["rte"])]))
    progress = re.compile(r"job 1/1 rte \S+: step \d/3 loss [\d.]+ ETA \d+m\d\ds")
    lines = [m for m in caplog.messages if progress.match(m)]
    assert len(lines) == 3, caplog.messages
    assert sum("evaluating 1 jobs" in m for m in caplog.messages) == 1
    caplog.clear()
    run(RunConfig_from([*args(setup, tmp_path / "quiet"), "--arches_file", str(one_arch),
                        "--seed", "3", "--task_name", "rte", "--data_dir", str(setup["rte"]),
                        "--no_progress"]))
    assert not [m for m in caplog.messages if "ETA" in m]


def test_a_training_set_smaller_than_a_batch_is_one_partial_batch(setup, tmp_path, caplog):
    tiny = write_glue_task(tmp_path / "RTE", "rte", n_train=5, n_dev=4)
    one_arch = tmp_path / "one.cands"
    one_arch.write_text(format_arch_lines(ARCHS[:1]))
    caplog.set_level("WARNING", logger="superbert.finetuning")
    res = run(RunConfig_from([*args(setup, tmp_path / "out"), "--arches_file", str(one_arch),
                              "--seed", "3", "--task_name", "rte", "--data_dir", str(tiny)]))
    assert len(res) == 1 and res[0].best is not None and math.isfinite(res[0].best)
    assert "the 5 training examples do not fill one batch of 8: each epoch is one partial " \
           "batch of 5" in caplog.text


def test_pick_device_follows_local_rank(monkeypatch):
    from superbert.finetuning.setup import pick_device
    assert pick_device(True, 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device(False, 0) == torch.device("cpu")


def test_shard_under_torchrun_is_refused(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="--shard under torchrun"):
        run(RunConfig_from([*args(setup, tmp_path / "out"), "--shard", "0/2"]))


def test_a_diverged_fine_tuning_is_warned_about(setup, tmp_path, monkeypatch, caplog):
    """A non-finite dev score never becomes the best, and it is said."""
    import superbert.finetuning.loop as loop
    real = loop.evaluate
    calls = []

    def nan_at_first(*a, **k):
        outcome = real(*a, **k)
        calls.append(outcome.score)
        if len(calls) == 1:
            outcome.score = float("nan")
        return outcome

    monkeypatch.setattr(loop, "evaluate", nan_at_first)
    caplog.set_level("WARNING", logger="superbert.finetuning")
    one_arch = tmp_path / "one.cands"
    one_arch.write_text(format_arch_lines(ARCHS[:1]))
    (res,) = run(RunConfig_from([*args(setup, tmp_path / "out"), "--arches_file", str(one_arch),
                                 "--seed", "3", "--task_name", "rte", "--data_dir",
                                 str(setup["rte"])]))
    assert "dev score nan at step 2: the fine-tuning diverged" in caplog.text
    assert res.best is not None and math.isfinite(res.best)
