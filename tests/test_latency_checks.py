"""Nothing lost, nothing silently wrong, one clear line: output paths that are directories or
inputs, candidates outside the space, non-finite or non-positive flags, wrong-typed sidecar and
time.pt fields; and a run a person can follow: progress lines off a terminal, a noisy reference
re-timed, plots that say what they show."""
import json
import logging
import math
import os
import shutil
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import inference_time_evaluation
import latency_predictor
import searcher
from superbert.arch import Arch, SearchSpace
from superbert.cli import run_main
from superbert.errors import UserError
from superbert.latency import (DATASET_FORMAT, CostModel, LatencyConfig, LatencyPredictor,
                               PredictorConfig, Timer, TrainConfig, format_latency_line,
                               sample_archs, train_from_dataset)
from superbert.latency.dataset import timing_progress
from superbert.results import TaskResult, format_results_block
from superbert.search import SearchConfig
from tests.helpers import make_tiny_supernet, tiny_config
from superbert.timing_protocol import Timing, TimingProtocol

BASE_MS = 300.0
SMALL = ["--layer_num_space", "1", "4", "--hidden_size_space", "128", "384",
         "--intermediate_size_space", "128", "1024", "--qkv_size_space", "180", "384"]
SPACE = SearchSpace(scheme="kd", layers=(1, 4), hidden=(128, 384), ffn=(128, 1024),
                    qkv=(180, 384))


def one_error_line(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_main(main, [str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def cost_predictor() -> LatencyPredictor:
    model = CostModel()
    model.coef.copy_(torch.tensor([3.0, 3.0, 0.0, 0.0, 0.0, 0.05, 0.05, 0.0], dtype=torch.float64))
    return LatencyPredictor(model, base_latency_ms=BASE_MS, scheme="kd")


def synthetic_dataset(path: Path, n: int = 30, **sidecar) -> Path:
    """A lat.tmp with a plausible law and a valid sidecar (nothing timed)."""
    archs = sample_archs(SPACE, n, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(format_latency_line(a, 0.1 + 1e-7 * a.flops(128)) for a in archs))
    side = {"format": DATASET_FORMAT, "version": 1, "backend": "torch",
            "machine": {"hostname": "h", "cpu_model": "c", "threads": 1, "torch_version": "t"},
            "protocol": {"threads": 1, "infer_cnt": 10, "backend": "torch"}, "scheme": "kd",
            "base_arch": str(Arch(12, 768, 12, 768, 3072)), "base_latency_ms": BASE_MS}
    side.update(sidecar)
    Path(str(path) + ".json").write_text(json.dumps(side))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("checks")
    cost_predictor().save(d / "time.pt")
    searcher.main(["--ckpt_path", str(d / "time.pt"), "--method", "Candidate", "--candidate_file",
                   str(d / "cands"), "--latency_constraint", "10", "--lat_min_ratio", "0.5",
                   "--lat_max_ratio", "2", *SMALL, "--no_progress"])
    cands = [Arch.parse(line) for line in (d / "cands").read_text().splitlines()]
    with open(d / "subbert.results", "w") as fh:
        for i, a in enumerate(cands[:30]):
            fh.write(format_results_block(TaskResult("mnli", a, a.param_count(), 0.5 + i / 100,
                                                     None, 1.0, 10)))
    return d


def search_args(files, method="Random", **flags):
    args = {"ckpt_path": files / "time.pt", "method": method, "candidate_file": files / "cands",
            "latency_constraint": 10, "lat_min_ratio": 0.5, "lat_max_ratio": 2, "gen_size": 5}
    if method in ("Evolved", "Pareto"):
        args["arch_perfs_file"] = files / "subbert.results"
    args.update(flags)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))] + SMALL + ["--no_progress"]


# ---- nothing lost ------------------------------------------------------------------------------
def test_an_existing_directory_is_never_an_output(files, tmp_path, capsys):
    d = tmp_path / "keep"
    d.mkdir()
    (d / "precious.txt").write_text("mine")
    lat = synthetic_dataset(tmp_path / "lat.tmp")
    cases = ((latency_predictor.main, ["--lat_dataset_path", lat, "--ckpt_path", d,
                                       "--predictor", "cost"], "--ckpt_path"),
             (searcher.main, search_args(files, output_file=d), "--output_file"),
             (searcher.main, search_args(files, "Fast", output_file=d), "--output_file"),
             (searcher.main, search_args(files, "Candidate", candidate_file=d), "--candidate_file"),
             (inference_time_evaluation.main, ["--output", d, "--num_archs", "1"], "--output"))
    for main, argv, flag in cases:
        says = one_error_line(main, argv, capsys)
        assert flag in says and "is a folder" in says
        assert sorted(p.name for p in d.iterdir()) == ["precious.txt"]
        assert (d / "precious.txt").read_text() == "mine"


def test_an_output_is_never_one_of_the_inputs(files, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    lat = synthetic_dataset(tmp_path / "lat.tmp")
    link = tmp_path / "link-to-cands"
    os.symlink(work / "cands", link)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    lat_before = lat.read_text()
    cases = ((searcher.main, search_args(work, output_file=work / "cands"), "--candidate_file"),
             (searcher.main, search_args(work, "Fast", output_file=link), "--candidate_file"),
             (searcher.main, search_args(work, "Evolved", output_file=work / "subbert.results"),
              "--arch_perfs_file"),
             (searcher.main, search_args(work, output_file=work / "time.pt"), "--ckpt_path"),
             (searcher.main, search_args(work, "Candidate", candidate_file=work / "time.pt"),
              "--ckpt_path"),
             (latency_predictor.main, ["--lat_dataset_path", lat, "--ckpt_path", lat,
                                       "--predictor", "cost"], "--lat_dataset_path"),
             (latency_predictor.main, ["--get_candidates", "--ckpt_path", work / "time.pt",
                                       "--candidate_file", work / "time.pt"], "--ckpt_path"))
    for main, argv, names in cases:
        says = one_error_line(main, argv, capsys)
        assert "same file as" in says and names in says, says
    # The dataset's sidecar is no predictor file: refused before the fit, as a foreign file.
    says = one_error_line(latency_predictor.main, ["--lat_dataset_path", lat, "--ckpt_path",
                                                   str(lat) + ".json", "--predictor", "cost"],
                          capsys)
    assert "--ckpt_path" in says and "is not a latency predictor" in says, says
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before
    assert lat.read_text() == lat_before


# ---- nothing silently wrong --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["Random", "Fast", "Evolved"])
@pytest.mark.parametrize("bad, says", [
    (Arch(2, 256, 4, 256, 512), "KD scheme keeps all 12 heads"),  # an MLM arch in a KD search
    (Arch(2, 512, 12, 192, 512), "hidden size 512 is outside"),  # outside the flags' space
])
def test_every_method_checks_every_candidate(files, tmp_path, capsys, method, bad, says):
    cands = tmp_path / "cands"
    cands.write_text((files / "cands").read_text() + f"{bad}\n")
    out = tmp_path / "gen"
    err = one_error_line(searcher.main, search_args(files, method, candidate_file=cands,
                                                    output_file=out), capsys)
    assert str(cands) in err and says in err
    assert not out.exists()


BAD_FLOATS = st.one_of(st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0]),
                       st.floats(max_value=0.0, allow_nan=False))
SEARCH_FLOATS = ("base_latency", "latency_constraint", "lat_min_ratio", "lat_max_ratio",
                 "lat_norm")


@given(name=st.sampled_from(SEARCH_FLOATS), value=BAD_FLOATS)
@settings(max_examples=80, deadline=None)
def test_non_positive_or_non_finite_search_flags_are_refused(name, value):
    for cls, extra in ((SearchConfig, {"candidate_file": "c"}), (PredictorConfig, {})):
        with pytest.raises(UserError, match=f"--{name} must be a positive finite number"):
            cls(**extra, **{name: value})
    with pytest.raises(UserError, match="--feature_norm"):
        SearchConfig(candidate_file="c", feature_norm=(768.0, 12.0, value, 768.0))


@given(name=st.sampled_from(["explore_rate", "crossover"]),
       value=st.one_of(st.sampled_from([math.inf, -math.inf, math.nan]),
                       st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-9)))
@settings(max_examples=40, deadline=None)
def test_probabilities_outside_0_1_are_refused(name, value):
    with pytest.raises(UserError, match=f"--{name} must be a probability"):
        SearchConfig(candidate_file="c", **{name: value})


@given(name=st.sampled_from(["infer_cnt", "num_archs", "threads", "batch_size",
                             "max_seq_length", "passes"]),
       value=st.integers(max_value=0))
@settings(max_examples=60, deadline=None)
def test_non_positive_timing_counts_are_refused(name, value):
    with pytest.raises(UserError, match="at least 1"):
        LatencyConfig(**{name: value})


def test_non_finite_flags_exit_2_from_the_scripts(files, tmp_path, capsys):
    for main, argv in ((searcher.main, search_args(files, latency_constraint="inf")),
                       (searcher.main, search_args(files, base_latency="nan")),
                       (searcher.main, search_args(files, lat_max_ratio="-1")),
                       (latency_predictor.main, ["--base_latency", "0"]),
                       (latency_predictor.main, ["--lr", "nan"])):
        assert "must be a positive finite number" in one_error_line(main, argv, capsys)


# ---- one clear line ----------------------------------------------------------------------------
@pytest.mark.parametrize("change, names", [
    ({"machine": {"threads": "1"}}, "machine: field 'threads' must be an integer"),
    ({"protocol": {"infer_cnt": "10"}}, "field 'protocol.infer_cnt' must be int"),
    ({"protocol": {"threads": 1.5}}, "field 'protocol.threads' must be int"),
    ({"base_latency_ms": "300"}, "field 'base_latency_ms' must be a number"),
    ({"base_latency_ms": -3}, "field 'base_latency_ms' must be a positive"),
    ({"scheme": ["kd"]}, "field 'scheme' must be a string"),
    ({"backend": "tensorrt"}, "field 'backend'"),
    ({"runtime": "onnxruntime"}, "field 'runtime' must be an object"),
])
def test_wrong_typed_sidecar_fields_name_file_and_field(tmp_path, capsys, change, names):
    lat = synthetic_dataset(tmp_path / "lat.tmp", **change)
    says = one_error_line(latency_predictor.main, ["--lat_dataset_path", lat, "--ckpt_path",
                                                   tmp_path / "time.pt", "--predictor", "cost"],
                          capsys)
    assert f"{lat}.json" in says and names in says, says
    assert not (tmp_path / "time.pt").exists()


@pytest.mark.parametrize("key, value, names", [
    ("base_latency_ms", "300", "field 'base_latency_ms' must be a number"),
    ("lat_norm", float("nan"), "field 'lat_norm' must be a number"),
    ("feature_norm", ["768", 12, 3072, 768], "field 'feature_norm' must be 4 positive numbers"),
    ("backend", 3, "field 'backend' must be a string"),
    ("scheme", 1, "field 'scheme' must be a string"),
    ("meta", {"timing": {"protocol": {"threads": "1"}}}, "field 'protocol.threads' must be int"),
    ("meta", {"timing": {"base_arch": 12}}, "field 'base_arch' must be a string"),
])
def test_wrong_typed_time_pt_fields_name_file_and_field(tmp_path, capsys, key, value, names):
    blob = cost_predictor().to_checkpoint()
    blob[key] = value
    torch.save(blob, tmp_path / "time.pt")
    says = one_error_line(searcher.main, ["--ckpt_path", tmp_path / "time.pt", "--method",
                                          "Candidate", "--candidate_file", tmp_path / "c"], capsys)
    assert str(tmp_path / "time.pt") in says and names in says, says


# ---- a run a person can follow -----------------------------------------------------------------
def test_progress_lines_every_n_items_or_seconds_with_an_eta(caplog):
    now = [0.0]
    with caplog.at_level(logging.INFO, logger="superbert.latency.dataset"):
        log = timing_progress(120, every=50, seconds=1e9, clock=lambda: now[0], tty=False)
        for _ in range(120):
            now[0] += 0.5
            log.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["timed 50/120 archs, 500 ms/arch, ETA 0:00:35",
                     "timed 100/120 archs, 500 ms/arch, ETA 0:00:10",
                     "timed 120/120 archs, 500 ms/arch, ETA 0:00:00"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="superbert.latency.dataset"):
        log = timing_progress(10, every=1000, seconds=10.0, clock=lambda: now[0], tty=False)
        for _ in range(10):
            now[0] += 4.0
            log.update()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "timed 3/10 archs", "timed 6/10 archs", "timed 9/10 archs", "timed 10/10 archs"]


def test_latency_stage_off_a_terminal_logs_progress_not_per_arch_lines(tmp_path, caplog):
    model = make_tiny_supernet(tmp_path / "supernet", scheme="kd", layers=2, hidden=32, heads=4,
                               ffn=64)
    with caplog.at_level(logging.INFO, logger="superbert.latency.dataset"):
        inference_time_evaluation.main(
            ["--bert_model", str(model), "--num_archs", "4", "--infer_cnt", "1", "--warmup", "0",
             "--max_seq_length", "8", "--output", str(tmp_path / "lat.tmp"), "--base_arch",
             str(Arch(1, 16, 4, 16, 32)), "--no_progress", "--hidden_size_space", "8", "32",
             "--intermediate_size_space", "8", "64", "--qkv_size_space", "8", "32"])
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("timed ")]
    assert len(progress) == 1 and progress[0].startswith("timed 4/4 archs, ")
    assert "ms/arch, ETA 0:00:00" in progress[0]


def test_a_noisy_reference_is_retimed_once_then_warned_about(monkeypatch, caplog):
    arch = Arch(1, 16, 4, 16, 32)
    timer = Timer(tiny_config("kd", layers=1, hidden=16, heads=4, ffn=32), "kd",
                  TimingProtocol(infer_cnt=3, warmup=0, seq_len=8))
    for series, calls, warned in (([(10.0, 10.5)], 1, False),        # steady: timed once
                                  ([(10.0, 15.0), (10.0, 10.2)], 2, False),  # re-timed, fine
                                  ([(10.0, 15.0), (10.0, 14.0)], 2, True)):  # still noisy
        given = iter(series)
        seen = []

        def fake_time(arch, runs=None, warmup=None):
            seen.append(warmup)
            median, mean = next(given)
            return Timing(arch, median, mean, 3, median)

        monkeypatch.setattr(timer, "time", fake_time)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="superbert.latency.timing"):
            got = timer.time_reference(arch)
        assert len(seen) == calls and got.mean_ms == series[-1][1]
        assert all(w == 3 for w in seen)  # extra warm-up both times
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == int(warned)
        if warned:
            assert "noisily twice" in warnings[0] and "every speedup" in warnings[0]


@pytest.fixture
def saved_figures(monkeypatch):
    figs = []
    real = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figs.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figs


def test_predictor_plot_names_the_predictor_and_its_scores(tmp_path, saved_figures):
    lat = synthetic_dataset(tmp_path / "lat.tmp")
    pred, rep = train_from_dataset(lat, tmp_path / "time.pt", TrainConfig(predictor="cost"),
                                   plot=tmp_path / "p.png", progress=False)
    (fig,) = saved_figures
    ax = fig.axes[0]
    assert "cost model" in ax.get_title() and "torch" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[1] == (f"cost model predictor: MAPE {rep.test.mape:.2f}%, Kendall tau "
                         f"{rep.test.kendall_tau:.3f}")
    assert legend[0].startswith("FLOPs baseline: MAPE ")
    assert "(ms)" in ax.get_xlabel() and "(ms)" in ax.get_ylabel()


def test_generation_plot_shows_every_point_of_each_generation(files, tmp_path, saved_figures):
    searcher.main(search_args(files, "Evolved", output_file=tmp_path / "g", gen_size=10,
                              plot=tmp_path / "g.png"))
    (fig,) = saved_figures
    assert len(fig.axes) == 2
    spread = fig.axes[1]
    points = spread.collections[0].get_offsets()
    assert len(points) == 30  # every evaluated arch, not a line through the means
    assert sorted(set(np.round(points[:, 0]).astype(int))) == [0, 1, 2]  # 3 generations of 10
    assert "generation" in spread.get_xlabel()
    assert "torch" in fig.axes[0].get_xlabel() and "ms" in fig.axes[0].get_xlabel()
