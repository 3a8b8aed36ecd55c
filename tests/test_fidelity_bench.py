"""bench/bench_fidelity.py: the pure parts (equal-latency draws, bootstrap tau, seed noise, the
median candidate), bad input, and one run of the whole bench at a tiny size whose markdown table
is checked for its sections and shape (not its numbers)."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau

from superbert.arch import Arch
from superbert.errors import UserError
from superbert.report.fidelity import (draw_equal_latency, kendall_with_interval, latency_band,
                                       median_arch, min_pairwise_distance, seed_spread,
                                       spread_shapes)
from superbert.tasks.books import BookTasksConfig, make_book_tasks

from helpers import make_tiny_supernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_fidelity  # noqa: E402  (bench/ on sys.path, as when a bench runs)


# ---- equal-latency draws ------------------------------------------------------------------------
def arch(layers: int, hidden: int, qkv: int, ffn: int) -> Arch:
    return Arch(layers, hidden, 12, qkv, ffn)


def test_draw_takes_the_extreme_shapes_of_one_band():
    deep_narrow, shallow_wide = arch(6, 128, 96, 256), arch(2, 384, 384, 1536)
    middle = [arch(4, 256, q, f) for q in (240, 252, 264) for f in (896, 960, 1024)]
    slow = arch(6, 384, 384, 1536)  # the widest shape of all, but twice as slow
    archs = middle[:4] + [deep_narrow] + middle[4:] + [shallow_wide, slow]
    ms = [10.0 + 0.05 * i for i in range(len(archs) - 1)] + [20.0]
    picks = [archs[i] for i in draw_equal_latency(archs, ms, 2, band=0.05)]
    assert set(picks) == {deep_narrow, shallow_wide}
    assert slow not in [archs[i] for i in draw_equal_latency(archs, ms, len(archs), band=0.05)]


def test_band_prefers_the_largest_set_then_the_target():
    ms = [10.0, 10.2, 10.4, 30.0, 30.3, 30.6, 50.0]
    assert latency_band(ms, 0.05) == [0, 1, 2]            # equal sizes: the fastest without target
    assert latency_band(ms, 0.05, target=31.0) == [3, 4, 5]
    assert latency_band([5.0, 20.0, 20.5, 21.0, 9.0], 0.05) == [1, 2, 3]
    with pytest.raises(UserError):
        latency_band(ms, 1.5)


shapes = st.builds(arch, st.integers(1, 6), st.sampled_from([128, 192, 256, 320, 384]),
                   st.sampled_from([96, 192, 288, 384]), st.sampled_from([256, 512, 1024, 1536]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(shapes, st.floats(5.0, 15.0)), min_size=1, max_size=12),
       st.integers(1, 5), st.sampled_from([0.03, 0.05, 0.1]))
def test_draw_is_in_one_band_distinct_and_spread(pairs, n, band):
    archs, ms = [a for a, _ in pairs], [m for _, m in pairs]
    picks = draw_equal_latency(archs, ms, n, band=band)
    lat = [ms[i] for i in picks]
    assert max(lat) <= min(lat) * (1 + band) / (1 - band) * (1 + 1e-9)
    picked = [archs[i] for i in picks]
    assert len(set(picked)) == len(picked)
    inside = latency_band(ms, band)
    distinct = {archs[i] for i in inside}
    assert len(picked) == min(n, len(distinct))
    assert draw_equal_latency(archs, ms, n, band=band) == picks  # deterministic
    # greedy max-min is within a factor 2 of the most spread draw of the band
    pool = sorted(distinct)
    if 2 <= len(picked) and len(pool) <= 9:
        best = max(min_pairwise_distance(list(c), pool)
                   for c in itertools.combinations(pool, len(picked)))
        assert min_pairwise_distance(picked, pool) >= best / 2 - 1e-9


def test_spread_shapes_needs_one_and_keeps_first_duplicates():
    a, b = arch(2, 128, 96, 256), arch(6, 384, 384, 1536)
    assert spread_shapes([a, a, b], 5) == [0, 2]
    with pytest.raises(UserError):
        spread_shapes([a], 0)


# ---- rank agreement and seed noise ------------------------------------------------------------
def test_kendall_interval_of_agreeing_and_reversed_ranks():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert kendall_with_interval(x, [10, 20, 30, 40, 50]) == (1.0, 1.0, 1.0)
    assert kendall_with_interval(x, [5, 4, 3, 2, 1]) == (-1.0, -1.0, -1.0)
    with pytest.raises(UserError):
        kendall_with_interval(x, [1, 2])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=3, max_size=10),
       st.integers(0, 3))
def test_kendall_interval_is_ordered_and_repeatable(pairs, seed):
    x, y = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    tau, lo, hi = kendall_with_interval(x, y, resamples=200, seed=seed)
    np.testing.assert_equal((tau, lo, hi), kendall_with_interval(x, y, resamples=200, seed=seed))
    np.testing.assert_allclose(tau, kendalltau(x, y).statistic)  # tau-b, ties as scipy's
    if np.isfinite(lo):
        assert -1 <= lo <= hi <= 1


def test_seed_spread_says_when_archs_differ_by_less_than_seed_noise():
    a, b = arch(2, 128, 96, 256), arch(3, 192, 192, 512)
    close = seed_spread({a: {1: 70.0, 2: 74.0}, b: {1: 71.0, 2: 75.0}})
    assert close.best == b and close.arch_spread == pytest.approx(1.0)
    assert close.seed_noise == pytest.approx(4.0) and "cannot matter" in close.verdict
    apart = seed_spread({a: {1: 60.0, 2: 61.0}, b: {1: 80.0, 2: 80.5}})
    assert apart.worst == a and "more than the seed noise" in apart.verdict
    assert "one seed" in seed_spread({a: {1: 60.0}, b: {1: 70.0}}).verdict


def test_median_arch_is_the_lower_middle():
    archs = [arch(i, 128, 96, 256) for i in range(1, 6)]
    assert median_arch(dict(zip(archs, [5.0, 1.0, 3.0, 4.0, 2.0]))) == archs[2]
    assert median_arch(dict(zip(archs[:4], [5.0, 1.0, 3.0, 4.0]))) == archs[2]
    with pytest.raises(UserError):
        median_arch({})


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--band", "0.7"], "--band"),
    (["--equal_latency_archs", "2"], "--equal_latency_archs"),
    (["--archs", "2"], "--archs"),
    (["--seeds", "0"], "--seeds"),
    (["--speedups", "2", "-1"], "--speedups"),
    (["--standalone_steps", "100", "300", "100"], "--standalone_steps"),
    (["--books", "/no/such/books", "--pretrain_data", "/no", "--time_pt", "/no"], "not found"),
])
def test_bad_input_is_one_error_line_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        bench_fidelity.main([*args, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_folder_it_did_not_write_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(SystemExit) as exc:
        bench_fidelity.main(["--out", str(tmp_path)])
    assert exc.value.code == 2 and "not written by this bench" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


# ---- the whole bench at a tiny size -------------------------------------------------------------
# Every stage of the bench is a script run as a subprocess; interpreter start-up and the torch and
# transformers imports would cost most of this test's time (~40 scripts), so one process imports
# them once and forks per script, as tests/test_data.py does.
HARNESS = r"""
import json, os, runpy, sys, time, traceback
sys.path.insert(0, "bench")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import torch
torch.set_num_threads(1)
import bench_fidelity
for name in ("superbert_run_en_classifier", "pre_training", "submodel_extractor", "searcher",
             "generate_data", "inference_time_evaluation", "latency_predictor"):
    __import__(name)  # the imports every script pays, once

def forked(cmd, log):
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1); os.dup2(fd, 2)
        sys.argv = cmd[1:]
        code = 0
        try:
            runpy.run_path(cmd[1], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc(); code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        sys.exit(f"error: {cmd[1]} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0

spec = json.loads(sys.argv[1])
for cmd in spec["prepare"]:
    forked([sys.executable, *cmd], spec["log"])
bench_fidelity.run_script = forked
bench_fidelity.main(spec["bench"])
"""


def write_corpus(path: Path) -> Path:
    words = "the a ship sea storm captain sailed found island night light wind house".split()
    rng = np.random.default_rng(0)
    docs = ["\n".join(" ".join(rng.choice(words, 9)) + "." for _ in range(12)) for _ in range(8)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


SPACE = ["--layer_num_space", "1", "3", "--hidden_size_space", "32", "64",
         "--intermediate_size_space", "32", "128", "--head_num_space", "1", "4"]
EQUAL, GEN, EVOLVED, SEEDS, SPEEDUP = 3, 2, 1, 2, 1.3


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("fidelity")
    supernet = make_tiny_supernet(d / "supernet", "mlm", layers=3, hidden=64, heads=4, ffn=128)
    make_book_tasks(BookTasksConfig(seed=3, train_examples=24, dev_examples=12,
                                    max_chapters_per_book=8), d / "books")
    base = str(Arch(3, 64, 4, 64, 128))
    prepare = [["generate_data.py", "--train_corpus", str(write_corpus(d / "corpus.txt")),
                "--output_dir", str(d / "pretrain_data"), "--bert_model", str(supernet),
                "--do_lower_case", "--max_seq_len", "32", "--no_progress"],
               ["inference_time_evaluation.py", "--bert_model", str(supernet), "--mlm", *SPACE,
                "--num_archs", "16", "--infer_cnt", "3", "--max_seq_length", "32",
                "--base_arch", base, "--output", str(d / "lat.tmp"), "--no_progress"],
               ["latency_predictor.py", "--lat_dataset_path", str(d / "lat.tmp"), "--ckpt_path",
                str(d / "time.pt"), "--predictor", "cost", "--no_progress"]]
    out = d / "out"
    bench = ["--quick", "--supernet", str(supernet), "--books", str(d / "books"),
             "--pretrain_data", str(d / "pretrain_data"), "--time_pt", str(d / "time.pt"),
             "--out", str(out), "--equal_latency_archs", str(EQUAL), "--timing_pool", "8",
             "--band", "0.2", "--archs", "3", "--seeds", str(SEEDS), "--target_speedup",
             str(SPEEDUP), "--speedups", str(SPEEDUP), "--gen_size", str(GEN),
             "--evolved_gens", str(EVOLVED), "--further_steps", "2", "--ft_steps", "2", "--standalone_steps", "3", "2",
             "--pair_steps", "3", "--ft_train", "24", "--eval_seq", "32",
             "--search_tasks", "sst-2", "--ft_lr", "3e-4", *SPACE]
    spec = {"prepare": prepare, "log": str(d / "prepare.log"), "bench": bench}
    res = subprocess.run([sys.executable, "-c", HARNESS, json.dumps(spec)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:],
                                 (out / "bench_fidelity.log").read_text()[-3000:]
                                 if (out / "bench_fidelity.log").exists() else "")
    return out


def sections(text: str) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("## "):
            key = line[3:].split(" ", 1)[0]
            parts[key] = []
        elif parts:
            parts[key].append(line)
    return parts


def table(lines: list[str]) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in lines if line.startswith("|")]
    assert rows and all(len(r) == len(rows[0]) for r in rows), rows
    assert set("".join(rows[1]).strip()) <= {"-", " "}  # the header's rule
    return rows[2:]


def test_tiny_bench_writes_every_section_in_shape(tiny_bench):
    text = (tiny_bench / "bench_fidelity.md").read_text()
    record = json.loads((tiny_bench / "bench_fidelity.json").read_text())
    parts = sections(text)
    assert list(parts) == ["1.", "2.", "3.", "4.", "5."]
    picked = record["equal_latency"]["draw"]["picked"]
    assert 2 <= len(picked) <= EQUAL
    assert len(table(parts["1."])) == len(picked)
    assert sum("Kendall tau" in line for line in parts["1."]) == 2 + 2  # fitness, search, 2 tasks
    assert any("seed noise" in line for line in parts["1."])
    assert len(table(parts["2."])) == 2  # searched and default ratios at one speedup
    assert len(table(parts["3."])) == 3  # the search's best, the best and median random
    evo = record["evolved_vs_random"]
    assert evo["random_evaluations"] == evo["evaluations"] <= GEN * (EVOLVED + 1)
    assert len(table(parts["4."])) == len(picked) and "Kendall tau" in "\n".join(parts["4."])
    assert len(table(parts["5."])) == 3
    assert all(len(per_seed) == SEEDS for per_seed in evo["standalone"].values())
    assert len(record["search_vs_default"][0]["winner_scores"]) == SEEDS
    assert len(record["points"]) == len(picked) + 3
    assert (tiny_bench / "bench_fidelity.png").stat().st_size > 0
    assert not list(tiny_bench.glob(".bench_fidelity.*"))  # nothing staged left behind
