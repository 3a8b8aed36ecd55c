"""Search: candidates, Random/Fast/Evolved/Pareto files that chain, window and rules on every line,
canonical de-duplication, exhaustion and bad input."""
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import latency_predictor
import searcher
import superbert.latency as latency
import superbert.search.measure as measure
from superbert.arch import Arch, SearchSpace
from superbert.cli import config_from_args, run_main
from superbert.errors import UserError
from superbert.latency import LatencyMLP, LatencyPredictor
from superbert.results import TaskResult, format_results_block
from superbert.search import (CandidateSet, Evolver, LatencyWindow, MutationGrid, SearchConfig,
                              build_window, enumerate_candidates, is_efficient, load_predictor,
                              measure_archs, read_candidates, roulette, write_candidates)
from superbert.timing_protocol import Timing, TimingProtocol

ROOT = Path(__file__).resolve().parents[1]
BASE_MS = 300.0
SPEEDUP = 5
# A small slice of the space keeps the tests quick (the grid of the original is 1.5M archs).
SMALL_FLAGS = ["--layer_num_space", 1, 4, "--hidden_size_space", 128, 384,
               "--intermediate_size_space", 128, 1024, "--qkv_size_space", 180, 384]
SMALL = SearchSpace(scheme="kd", layers=(1, 4), hidden=(128, 384), ffn=(128, 1024),
                    qkv=(180, 384), hidden_step=16, ffn_step=32, qkv_step=12)


def feasible_grid(pred, space=SMALL, speedup=SPEEDUP):
    every = list(space.iter_grid())
    return [a for a, ok in zip(every, LatencyWindow(BASE_MS, speedup).contains(pred.predict(every))) if ok]


def linear_predictor(weights=(0.2, 0.3, 0.25, 0.15), hidden_layer_num=3) -> LatencyMLP:
    """An MLP whose ReLUs pass the (positive) normalised features through: ms = 200 * w.x."""
    mlp = LatencyMLP(4, 4, hidden_layer_num)
    with torch.no_grad():
        for lin in [mlp.first_layer, *mlp.layers]:
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
        mlp.predict.weight.copy_(torch.tensor([weights], dtype=torch.float32))
        mlp.predict.bias.zero_()
    return mlp


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    pred = LatencyPredictor(linear_predictor(), base_latency_ms=BASE_MS, scheme="kd")
    pred.save(d / "time.pt")
    torch.save(linear_predictor().state_dict(), d / "bare.pt")
    return d


def run(argv, capsys=None):
    searcher.main([str(a) for a in list(argv) + SMALL_FLAGS + ["--no_progress"]])


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_main(searcher.main, [str(a) for a in list(argv) + SMALL_FLAGS + ["--no_progress"]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def predict(path, archs):
    return LatencyPredictor.load(path).predict(archs)


def test_candidate_random_fast_evolved_chain(files, tmp_path, capsys):
    ck = files / "time.pt"
    cands = tmp_path / "kd_4x"
    run(["--ckpt_path", ck, "--method", "Candidate", "--candidate_file", cands,
         "--latency_constraint", SPEEDUP])
    window = LatencyWindow(BASE_MS, SPEEDUP)
    archs = read_candidates(cands)
    assert len(archs) > 100
    assert window.contains(predict(ck, archs)).all()
    # the file is exactly the feasible part of the grid, in canonical repr
    assert archs == feasible_grid(LatencyPredictor.load(ck))
    assert cands.read_text().splitlines()[0] == str(archs[0])

    gen1 = tmp_path / "1st.cands"
    run(["--ckpt_path", ck, "--method", "Random", "--candidate_file", cands,
         "--output_file", gen1, "--latency_constraint", SPEEDUP, "--seed", 1])
    g1 = read_candidates(gen1)
    assert len(g1) == 25 and set(g1) <= set(archs)
    fast = tmp_path / "fast.cands"
    run(["--ckpt_path", ck, "--method", "Fast", "--candidate_file", cands,
         "--output_file", fast, "--latency_constraint", SPEEDUP])
    gf = read_candidates(fast)
    assert len(gf) == 25 and all(is_efficient(a) for a in gf)
    assert window.contains(predict(ck, gf)).all()
    # same seed, same generation
    again = tmp_path / "again.cands"
    run(["--ckpt_path", ck, "--method", "Random", "--candidate_file", cands,
         "--output_file", again, "--latency_constraint", SPEEDUP, "--seed", 1])
    assert again.read_text() == gen1.read_text()

    # the evaluator appends results in the original's format (MNLI fraction, SQuAD f1/em)
    results = tmp_path / "subbert.results"
    rng = random.Random(0)
    with open(results, "w") as fh:
        for a in g1:
            fh.write(format_results_block(TaskResult("mnli", a, a.param_count(), rng.random(), None, 1.0, 10)))
            fh.write(format_results_block(TaskResult("squad1", a, a.param_count(), 100 * rng.random(),
                                                     50.0, 1.0, 10)))
    gen2 = tmp_path / "2nd.cands"
    run(["--ckpt_path", ck, "--method", "Evolved", "--candidate_file", cands,
         "--arch_perfs_file", results, "--output_file", gen2, "--latency_constraint", SPEEDUP,
         "--plot", tmp_path / "gen2.png"])
    g2 = read_candidates(gen2)
    assert len(g2) == 25 and not set(g2) & set(g1)
    assert window.contains(predict(ck, g2)).all()
    assert (tmp_path / "gen2.png").stat().st_size > 1000
    # Pareto and crossover extensions chain too
    run(["--ckpt_path", ck, "--method", "Pareto", "--candidate_file", cands,
         "--arch_perfs_file", results, "--output_file", tmp_path / "p.cands",
         "--latency_constraint", SPEEDUP])
    gp = read_candidates(tmp_path / "p.cands")
    assert len(gp) == 25 and not set(gp) & set(g1)
    assert (predict(ck, gp) <= window.hi).all()
    run(["--ckpt_path", ck, "--method", "Evolved", "--candidate_file", cands, "--crossover",
         "--arch_perfs_file", results, "--output_file", tmp_path / "x.cands",
         "--latency_constraint", SPEEDUP, "--explore_rate", 0])
    assert not set(read_candidates(tmp_path / "x.cands")) & set(g1)


def test_original_key_orders_are_one_arch(tmp_path):
    a = Arch(3, 256, 12, 192, 480)
    kd_candidate = ("{'sample_layer_num': 3, 'sample_num_attention_heads': [12, 12, 12], "
                    "'sample_hidden_size': 256, 'sample_intermediate_sizes': [480, 480, 480], "
                    "'sample_qkv_sizes': [192, 192, 192]}")
    mutant = ("{'sample_layer_num': 3, 'sample_hidden_size': 256, 'sample_intermediate_sizes': "
              "[480, 480, 480], 'sample_num_attention_heads': [12, 12, 12], 'sample_qkv_sizes': "
              "[192, 192, 192]}")
    json_line = ('{"sample_layer_num": 3, "sample_hidden_size": 256, "sample_intermediate_sizes": '
                 '[480, 480, 480], "sample_num_attention_heads": [12, 12, 12], '
                 '"sample_qkv_sizes": [192, 192, 192]}')
    path = tmp_path / "c"
    path.write_text("\n".join([kd_candidate, mutant, json_line, str(a)]) + "\n")
    assert read_candidates(path) == [a]


def test_evolver_ranks_parents_never_reproposes_and_exhausts(tmp_path):
    pred = LatencyPredictor(linear_predictor(), base_latency_ms=BASE_MS, scheme="kd")
    space = SMALL
    window = LatencyWindow(BASE_MS, SPEEDUP)
    cands = feasible_grid(pred)
    rng = random.Random(0)
    evaluated = {a: rng.uniform(50, 90) for a in rng.sample(cands, 60)}
    evo = Evolver(pred, space, window, cands, evaluated, random.Random(1))
    ranked = sorted(evaluated, key=lambda a: -evaluated[a])[:25]
    assert evo.parents == ranked
    for _ in range(3):
        children = evo.next_generation()
        assert len(set(children)) == 25 and not set(children) & set(evaluated)
        assert window.contains(pred.predict(children)).all()
        evaluated.update({c: 60.0 for c in children})
        evo = Evolver(pred, space, window, cands, evaluated, random.Random(2))

    # a tiny space: every feasible arch evaluated -> a clear error, no endless loop
    tiny = SearchSpace(scheme="kd", layers=(1, 2), hidden=(128, 160), ffn=(128, 192),
                       qkv=(180, 192), hidden_step=16, ffn_step=32)
    t_all = list(tiny.iter_grid())
    wide = LatencyWindow(BASE_MS, 1, 0.01, 100)
    done = {a: float(i) for i, a in enumerate(t_all)}
    with pytest.raises(UserError, match="exhausted"):
        Evolver(pred, tiny, wide, t_all, done, random.Random(0)).next_generation()


def test_mutation_offsets_and_roulette():
    space = SearchSpace(scheme="kd", hidden_step=16, ffn_step=32, qkv_step=12)
    grid = MutationGrid(space)
    rng = random.Random(0)
    p = Arch(4, 320, 12, 240, 640)
    for _ in range(300):
        c = grid.mutate(p, rng, 0.25)
        assert abs(c.layers - 4) <= 1 and abs(c.hidden - 320) <= 16
        assert abs(c.ffn - 640) <= 64 and abs(c.qkv - 240) <= 24 and c.heads == 12
    off_grid = Arch(5, 564, 12, 528, 1054)  # e.g. a step-4 parent: no ValueError, snapped moves
    assert all(space.contains(grid.mutate(off_grid, rng, 0.5)) or True for _ in range(50))
    mlm = MutationGrid(SearchSpace(scheme="mlm", hidden_step=16, ffn_step=32))
    twelve = Arch(4, 768, 12, 768, 3072)  # the original crashed on 12-head MLM parents
    kids = [mlm.mutate(twelve, rng, 0.5) for _ in range(100)]
    assert all(k.qkv == 64 * k.heads for k in kids)
    counts = np.bincount([roulette([1.0, 2.0, 3.0], rng) for _ in range(3000)], minlength=3)
    assert counts[0] == 0 and counts[2] > counts[1] > 0
    assert roulette([5.0, 5.0], rng) == 0


def test_interpolated_enumeration_matches_exact():
    # a non-linear predictor: a random ReLU MLP, shifted to positive latencies
    torch.manual_seed(0)
    mlp = LatencyMLP(4, 32, 2)
    space = SearchSpace(scheme="kd", layers=(1, 3), hidden=(128, 384), ffn=(128, 1024),
                        qkv=(180, 384))  # the fine grid: steps 4 / 4 / 12, about 0.8M archs
    probe = LatencyPredictor(mlp)
    rng = random.Random(0)
    sample = probe.predict([space.sample(rng) for _ in range(2000)])
    with torch.no_grad():
        mlp.predict.bias += float(1.0 - sample.min()) / 200.0
    pred = LatencyPredictor(mlp)
    target = float(np.median(sample - sample.min() + 1.0))
    window = LatencyWindow(3 * target, 3)
    exact = enumerate_candidates(pred, space, window, "exact", progress=False)
    interp = enumerate_candidates(pred, space, window, "interp", progress=False)
    assert 10000 < len(exact) < 0.9 * space.size()

    def keys(c):
        return set((((c.layers * 10000 + c.hidden) * 10000 + c.ffn) * 10000 + c.qkv).tolist())

    a, b = keys(exact), keys(interp)
    assert len(a ^ b) <= 0.001 * len(a)
    assert interp.stats["predicted"] < 0.5 * space.size()
    assert window.contains(interp.latency_ms[interp.exact]).all()


def test_candidate_lines_are_canonical(tmp_path):
    archs = [Arch(1, 128, 12, 180, 128), Arch(8, 768, 12, 768, 3072), Arch(3, 256, 4, 256, 512)]
    c = CandidateSet(*(np.asarray([getattr(a, k) for a in archs]) for k in
                       ("layers", "hidden", "heads", "qkv", "ffn")),
                     latency_ms=np.ones(3), exact=np.ones(3, bool), stats={})
    write_candidates(tmp_path / "c", c)
    assert (tmp_path / "c").read_text() == "".join(f"{a}\n" for a in archs)


def test_bare_state_dict_and_scheme_contradiction(files, tmp_path, capsys):
    cands = tmp_path / "c"
    run(["--ckpt_path", files / "bare.pt", "--method", "Candidate", "--candidate_file", cands,
         "--latency_constraint", SPEEDUP, "--base_latency", BASE_MS, "--model", "KD"])
    assert read_candidates(cands) == feasible_grid(LatencyPredictor.load(files / "time.pt"))
    err = run_error(["--ckpt_path", files / "time.pt", "--method", "Candidate", "--candidate_file",
                     tmp_path / "d", "--model", "MLM"], capsys)
    assert "KD" in err and "MLM" in err


def test_bad_input_exits_2(files, tmp_path, capsys):
    ck = files / "time.pt"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    out = tmp_path / "out.cands"  # a fresh path: each step below fails on its input, not on it
    users = tmp_path / "users.cands"
    users.write_text("keep me\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    few = tmp_path / "few"
    few.write_text(str(Arch(2, 256, 12, 192, 480)) + "\n")
    results = tmp_path / "r"
    results.write_text(format_results_block(TaskResult("mnli", Arch(2, 256, 12, 192, 480), 1, 0.5,
                                                       None, 1.0, 1))[:-40])
    base = ["--ckpt_path", ck, "--output_file", out, "--latency_constraint", SPEEDUP]
    assert "cannot read latency predictor" in run_error(
        ["--ckpt_path", garbage, "--method", "Candidate", "--candidate_file", tmp_path / "c"], capsys)
    assert "is empty" in run_error(base + ["--method", "Random", "--candidate_file", empty], capsys)
    assert "fewer than --gen_size" in run_error(base + ["--method", "Random", "--candidate_file", few],
                                                capsys)
    assert "no arch" in run_error(["--ckpt_path", ck, "--method", "Candidate", "--candidate_file",
                                   tmp_path / "c", "--latency_constraint", 1000], capsys)
    assert "truncated" in run_error(base + ["--method", "Evolved", "--candidate_file", few,
                                            "--arch_perfs_file", results], capsys)
    assert not out.exists() and not (tmp_path / "c").exists()
    # a user's file where the generation goes is refused before any work, and kept
    assert "users.cands exists and is not a generation" in run_error(
        ["--ckpt_path", ck, "--output_file", users, "--method", "Random", "--candidate_file", few],
        capsys)
    assert users.read_text() == "keep me\n"
    # and through a real interpreter: one stderr line, exit status 2
    proc = subprocess.run([sys.executable, str(ROOT / "searcher.py"), "--ckpt_path", str(ck),
                           "--method", "Random", "--candidate_file", str(few),
                           "--output_file", str(users)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_latency_predictor_get_candidates(files, tmp_path):
    out = tmp_path / "c"
    latency_predictor.main(["--get_candidates", "--ckpt_path", str(files / "time.pt"),
                            "--candidate_file", str(out), "--latency_constraint", str(SPEEDUP),
                            "--no_progress", *[str(a) for a in SMALL_FLAGS]])
    coarse = SearchSpace(scheme="kd", layers=(1, 4), hidden=(128, 384), ffn=(128, 1024),
                         qkv=(180, 384), hidden_step=32, ffn_step=64, qkv_step=12)
    assert read_candidates(out) == feasible_grid(LatencyPredictor.load(files / "time.pt"), coarse)


def test_measure_times_bert_base_around_the_archs(monkeypatch):
    """--measure: speedups come from timings, BERT-base before (warmed up) and after the archs."""
    calls = []

    class FakeTimer:
        def __init__(self, config, scheme, protocol):
            self.n = 0

        def close(self):
            pass

        def time_reference(self, arch):
            calls.append(("reference", arch))
            return Timing(arch, 110.0, 110.0, 1)

        def time(self, arch):
            calls.append(("time", arch))
            ms = 90.0 if arch == latency.BERT_BASE else 10.0 * arch.layers
            return Timing(arch, ms, ms, 1)

    monkeypatch.setattr(measure, "Timer", FakeTimer)
    pred = LatencyPredictor(linear_predictor(), base_latency_ms=BASE_MS, scheme="kd")
    archs = [Arch(2, 256, 12, 192, 512), Arch(3, 256, 12, 192, 512)]
    base, rows = measure_archs(archs, pred, None, "kd", protocol=TimingProtocol())
    assert calls == [("reference", latency.BERT_BASE), ("time", archs[0]), ("time", archs[1]),
                     ("time", latency.BERT_BASE)]
    assert base == 100.0  # mean of the timings before and after
    assert [r.measured_ms for r in rows] == [20.0, 30.0]
    assert [r.measured_speedup for r in rows] == [5.0, pytest.approx(100 / 30)]
    assert [r.predicted_speedup for r in rows] == pytest.approx(
        [BASE_MS / p for p in pred.predict(archs)])
    # a dataset timed against a custom reference: that arch is re-timed, not BERT-base
    custom = Arch(4, 384, 12, 384, 1536)
    pred.meta = {"timing": {"base_arch": str(custom)}}
    calls.clear()
    measure_archs(archs[:1], pred, None, "kd", protocol=TimingProtocol())
    assert calls == [("reference", custom), ("time", archs[0]), ("time", custom)]


def test_search_config_is_the_flags_and_validates_once():
    parsed = searcher.build_parser().parse_args(["--candidate_file", "c", "--method", "eVoLvEd",
                                                 "--arch_perfs_file", "r", "--crossover"])
    cfg = config_from_args(SearchConfig, parsed)
    assert cfg == SearchConfig(candidate_file="c", method="Evolved", arch_perfs_file="r",
                               crossover=0.5)  # one set of defaults: the parser's are the config's
    assert cfg.layer_num_space == (1, 8) and cfg.scheme is None
    assert cfg.steps() == {"hidden_step": 16, "ffn_step": 32, "qkv_step": 12}
    assert SearchConfig(candidate_file="c", fine_grid=True, ffn_step=8).steps() == {
        "hidden_step": 4, "ffn_step": 8, "qkv_step": 12}
    assert SearchConfig(candidate_file="c", model="KD").scheme == "kd"
    for kwargs, says in ((dict(), "needs --candidate_file (from --method Candidate)"),
                         (dict(method="Candidate"), "needs --candidate_file (where"),
                         (dict(method="Pareto", candidate_file="c"), "--arch_perfs_file"),
                         (dict(method="Best", candidate_file="c"), "unknown --method"),
                         (dict(candidate_file="c", measure=-1), "--measure")):
        with pytest.raises(UserError, match=re.escape(says)):
            SearchConfig(**kwargs)


def test_window_needs_a_reference_latency(tmp_path):
    LatencyPredictor(linear_predictor(), scheme="kd").save(tmp_path / "time.pt")
    cfg = SearchConfig(ckpt_path=str(tmp_path / "time.pt"), candidate_file="c")
    pred = load_predictor(cfg)
    with pytest.raises(UserError, match="--base_latency"):
        build_window(cfg, pred)
    given = SearchConfig(ckpt_path=cfg.ckpt_path, candidate_file="c", base_latency=BASE_MS)
    window = build_window(given, load_predictor(given))
    assert window.base_ms == BASE_MS and window.base_name == "BERT-base"
