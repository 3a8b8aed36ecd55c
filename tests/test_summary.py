"""The honest summary: chance levels, majority-class rates and collapse flags beside the scores,
the default-ratio baseline at the chosen arch's latency, and both side by side in summary.md.

Everything here runs on hand-made result files and tiny models: no training."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superbert.arch import Arch, Scheme, SearchSpace
from superbert.hf import save_model
from superbert.latency import BERT_BASE, CostModel, LatencyPredictor
from superbert.modeling import AutoTinyBertForSequenceClassification
from superbert.results import TaskResult, format_results_block
from superbert.search.baseline import default_ratio_archs, matching_default_arch
from superbert.search.window import LatencyWindow, write_window
from superbert.tasks.books import PairExample, write_mnli
from tests.helpers import VOCAB, make_tiny_supernet, tiny_config

from superbert.errors import UserError
from superbert.report import timing
from superbert.report.chance import (AT_CHANCE, AT_MAJORITY, COLLAPSED, TaskLevels, all_at_chance,
                                     chance_flags, collapse_flag, task_levels)
from superbert.report.markdown import format_summary
from superbert.report.summary import build_summary, generation_table, write_summary
from superbert.results import Evaluated, evaluated_archs
from superbert.timing_protocol import Timing

ROOT = Path(__file__).resolve().parents[1]


# ---- the flags, pure ----------------------------------------------------------------------------

def test_chance_flags_on_hand_made_scores():
    third = 100 / 3
    # the quickstart's collapsed MNLI-style classifier: 33.00 with 3 balanced labels
    assert chance_flags(33.0, third, third) == [AT_CHANCE]
    assert chance_flags(35.3, third, third) == [AT_CHANCE]      # within 2 points above
    assert chance_flags(20.0, third, third) == [AT_CHANCE]      # below chance says nothing either
    assert chance_flags(36.0, third, third) == []               # 2.67 above: a signal
    assert chance_flags(71.5, third, third) == []               # a good classifier
    # an unbalanced binary dev set: 61 is above chance but only the majority class's rate
    assert chance_flags(61.0, 50.0, 60.0) == [AT_MAJORITY]
    assert chance_flags(75.0, 50.0, 60.0) == []
    # unknown levels flag nothing
    assert chance_flags(10.0, None, None) == []
    assert chance_flags(10.0, None, 12.0) == [AT_MAJORITY]


def test_collapse_flag_on_hand_made_predictions():
    assert collapse_flag({"contradiction": 0, "entailment": 200, "neutral": 0}) == COLLAPSED
    assert collapse_flag([190, 6, 4]) == COLLAPSED               # 95% exactly
    assert collapse_flag([189, 7, 4]) is None                    # 94.5%
    assert collapse_flag({"0": 104, "1": 96}) is None            # a working binary classifier
    with pytest.raises(ValueError):
        collapse_flag([0, 0])


# ---- chance and majority from the dev files -----------------------------------------------------

def _sst2(d: Path, dev_labels: list[int]) -> Path:
    d.mkdir(parents=True)
    rows = ["sentence\tlabel"] + [f"the words of sentence {i} are here\t{lab}"
                                  for i, lab in enumerate(dev_labels)]
    (d / "dev.tsv").write_text("\n".join(rows) + "\n")
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    return d


def _mnli(d: Path, labels: list[str]) -> Path:
    d.mkdir(parents=True)
    ex = [PairExample("book", f"a sentence {i}.", f"b sentence {i}.", lab)
          for i, lab in enumerate(labels)]
    write_mnli(d / "train.tsv", ex, dev=False)
    write_mnli(d / "dev_matched.tsv", ex, dev=True)
    write_mnli(d / "dev_mismatched.tsv", ex, dev=True)
    return d


def _squad(d: Path) -> Path:
    d.mkdir(parents=True)

    def article(qid: str, context: str, answer: str) -> dict:
        return {"title": "t", "paragraphs": [{"context": context, "qas": [{
            "id": qid, "question": "who ____ ?",
            "answers": [{"text": answer, "answer_start": context.index(answer)}]}]}]}

    train = [article("t1", "Alice went home.", "Alice"), article("t2", "Then Alice ran.", "Alice"),
             article("t3", "Bob sat down.", "Bob")]
    dev = [article("d1", "Alice laughed loudly.", "Alice"),
           article("d2", "Later Bob slept.", "Bob"),
           article("d3", "Yes Carol said.", "Carol"), article("d4", "Dan is here.", "Dan")]
    (d / "train-v1.1.json").write_text(json.dumps({"version": "1.1", "data": train}))
    (d / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": dev}))
    return d


def test_task_levels_from_dev_files(tmp_path):
    sst = task_levels("sst-2", _sst2(tmp_path / "SST-2", [0, 0, 0, 1]))
    assert (sst.chance, sst.majority, sst.dev_examples) == (50.0, 75.0, 4)
    mnli = task_levels("mnli", _mnli(tmp_path / "MNLI", ["entailment", "neutral",
                                                         "contradiction"] * 2))
    assert mnli.chance == pytest.approx(100 / 3) and mnli.majority == pytest.approx(100 / 3)
    # SQuAD-style: the better trivial answer: "Alice" (commonest training answer) hits 1 of 4,
    # the first context word hits d1 ("Alice") and d4 ("Dan"): 2 of 4
    sq = task_levels("squad", _squad(tmp_path / "SQuAD"))
    assert sq.chance == pytest.approx(50.0) and sq.majority is None
    assert "first context word F1 50.00" in sq.chance_note and "'Alice' F1 25.00" in sq.chance_note
    # without data: chance from the label count; SQuAD unknown
    bare = task_levels("mnli")
    assert bare.chance == pytest.approx(100 / 3) and bare.majority is None
    assert task_levels("squad1").chance is None
    assert task_levels("cola").chance == 0.0


def test_generation_table_counts_archs_at_chance():
    a, b = Arch(1, 64, 2, 64, 256), Arch(2, 64, 2, 64, 256)
    levels = {"mnli": TaskLevels("mnli", "acc", 100 / 3, "", 100 / 3)}
    ev = [Evaluated(a, 1, {"mnli": 33.0}, 33.0),
          Evaluated(b, 1, {"mnli": 48.0}, 48.0),
          Evaluated(a, 2, {"mnli": 34.0}, 34.0)]
    assert [r["at_chance"] for r in generation_table(ev, levels)] == [1, 1]
    assert "at_chance" not in generation_table(ev)[0]  # without levels, the old rows
    assert all_at_chance({"mnli": 33.0, "squad1": 3.0}, levels)  # squad1's chance unknown
    assert not all_at_chance({"squad1": 3.0}, levels)  # nothing known: not claimed


# ---- the default-ratio baseline -----------------------------------------------------------------

def test_default_ratio_archs_mlm_keeps_bert_ratios_on_the_grid():
    space = SearchSpace(scheme=Scheme.MLM, layers=(1, 3), hidden=(64, 128), ffn=(128, 512),
                        heads=(1, 4), head_dim=32, hidden_step=16, ffn_step=32)
    archs = default_ratio_archs(space)
    assert len(archs) == 3 * 5 and len(set(archs)) == len(archs)
    for a in archs:
        assert space.contains(a, on_grid=True)
        assert a.ffn == 4 * a.hidden                       # 4 x hidden is on this FFN grid
        assert a.qkv == a.heads * 32 and abs(a.qkv - a.hidden) <= 16  # nearest heads x 32
    assert Arch(2, 96, 3, 96, 384) in archs and Arch(3, 128, 4, 128, 512) in archs
    # 80 / 32 = 2.5 heads: the tie goes to the smaller
    assert Arch(1, 80, 2, 64, 320) in archs


def test_default_ratio_archs_kd_keeps_the_fixed_heads():
    space = SearchSpace(scheme=Scheme.KD, layers=(2, 2), hidden=(64, 128), qkv=(96, 192),
                        ffn=(128, 512), kd_heads=12, qkv_step=12, hidden_step=16, ffn_step=32)
    archs = default_ratio_archs(space)
    assert {a.hidden for a in archs} == {64, 80, 96, 112, 128}
    for a in archs:
        assert a.heads == 12 and a.qkv % 12 == 0 and space.contains(a, on_grid=True)
        assert a.ffn == 4 * a.hidden
    by_hidden = {a.hidden: a.qkv for a in archs}
    # qkv = hidden where the grid has it, else the nearest multiple of 12 in 96..192
    assert by_hidden == {64: 96, 80: 96, 96: 96, 112: 108, 128: 132}


def _cost_predictor(base_ms: float | None = 50.0, scheme: str = "mlm") -> LatencyPredictor:
    model = CostModel()
    with torch.no_grad():  # ms ~ L*d*f + L*d*q + a per-layer overhead (normalised features)
        model.coef.copy_(torch.tensor([1.0, 1.0, 0, 0, 0, 0.05, 0, 0], dtype=torch.float64))
    return LatencyPredictor(model, base_latency_ms=base_ms, scheme=scheme)


def test_matching_default_arch_has_the_closest_predicted_latency():
    space = SearchSpace(scheme=Scheme.MLM, layers=(1, 4), hidden=(64, 128), ffn=(128, 512),
                        heads=(1, 4), head_dim=32, hidden_step=16, ffn_step=32)
    pred = _cost_predictor()
    searched = Arch(4, 64, 1, 32, 512)  # deep, narrow attention, wide FFN: not BERT-shaped
    match = matching_default_arch(pred, searched, space)
    target = pred.predict_one(searched)
    gaps = [abs(pred.predict_one(a) - target) for a in default_ratio_archs(space)]
    assert abs(pred.predict_one(match) - target) == pytest.approx(min(gaps))
    assert match.ffn == 4 * match.hidden and match != searched
    # a default-ratio arch is its own match
    assert matching_default_arch(pred, Arch(3, 96, 3, 96, 384), space) == Arch(3, 96, 3, 96, 384)


# ---- summary.md from hand-made result files ------------------------------------------------

CHOSEN = Arch(2, 64, 1, 32, 256)
OTHER = Arch(1, 64, 2, 64, 128)
DEFAULT = Arch(2, 64, 2, 64, 256)
BASE = Arch(2, 64, 2, 64, 256)


def _block(task: str, arch: Arch, score: float, seed: int = 42) -> str:
    if task.startswith("squad"):
        return format_results_block(TaskResult(task, arch, 1000, score, score - 1, 1.0, 10, seed))
    return format_results_block(TaskResult(task, arch, 1000, score / 100, None, 1.0, 10, seed))


class FakeTimer:
    """Latency proportional to the arch's FLOPs: no model is built."""

    def __init__(self, config, scheme, protocol):
        self.protocol = protocol

    def _t(self, arch):
        ms = arch.flops() / 1e6
        return Timing(arch, ms, ms, self.protocol.infer_cnt)

    time = _t
    time_reference = _t


def _collapsed_classifier(out: Path, num_labels: int = 2) -> Path:
    """A tiny fine-tuned-model directory whose classifier always answers label 0."""
    cfg = tiny_config(layers=2, hidden=64, heads=2, qkv=64, ffn=256)
    cfg.num_labels = num_labels
    torch.manual_seed(0)
    model = AutoTinyBertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0] + [0.0] * (num_labels - 1)))
    return save_model(model, out, VOCAB, do_lower_case=True)


@pytest.fixture()
def pipeline_files(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "Timer", FakeTimer)
    supernet = make_tiny_supernet(tmp_path / "supernet", layers=2, hidden=64, heads=2, qkv=64,
                                  ffn=256)
    _cost_predictor(base_ms=BASE.flops() / 1e6).save(tmp_path / "time.pt")
    books = tmp_path / "books"
    sst = _sst2(books / "SST-2", [0] * 12 + [1] * 8)
    mnli = _mnli(books / "MNLI", ["entailment", "neutral", "contradiction"] * 4)
    squad_dir = _squad(books / "SQuAD")
    (tmp_path / "gen_1.cands").write_text(f"{CHOSEN}\n{OTHER}\n")
    search = tmp_path / "search.results"
    # the search: MNLI-style at chance for every arch, SQuAD-style F1 at the trivial baseline
    search.write_text(_block("mnli", CHOSEN, 33.0) + _block("squad1", CHOSEN, 49.0)
                      + _block("mnli", OTHER, 33.0) + _block("squad1", OTHER, 30.0))
    final = tmp_path / "final_eval"
    final.mkdir()
    (final / "subbert.results").write_text(_block("sst-2", CHOSEN, 60.0)
                                           + _block("mnli", CHOSEN, 33.0))
    _collapsed_classifier(final / "sst-2_seed42")
    default_final = tmp_path / "final_default"
    default_final.mkdir()
    (default_final / "subbert.results").write_text(_block("sst-2", DEFAULT, 71.0)
                                                   + _block("mnli", DEFAULT, 45.0))
    default_further = make_tiny_supernet(tmp_path / "default_further", layers=2, hidden=64,
                                         heads=2, qkv=64, ffn=256)
    (tmp_path / "default.arch").write_text(f"{DEFAULT}\n")
    return {"tmp": tmp_path, "supernet": supernet, "search": search,
            "gens": [tmp_path / "gen_1.cands"], "final": final / "subbert.results",
            "default_final": default_final / "subbert.results",
            "default_further": default_further,
            "task_data": {"sst-2": str(sst), "mnli": str(mnli), "squad1": str(squad_dir)}}


def test_summary_shows_chance_majority_collapse_and_the_default_arch(pipeline_files):
    f = pipeline_files
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, final_results=f["final"], task_data=f["task_data"],
                      default_arch=DEFAULT, default_final_results=f["default_final"],
                      default_further=f["default_further"])
    md_path, js_path = write_summary(s, f["tmp"] / "summary")
    md = md_path.read_text()
    # each task's chance and majority-class rate, from the dev files
    assert "| task | metric | dev examples | chance | majority class | chance is |" in md
    assert "| sst-2 | acc | 20 | 50.00 | 60.00 | 1/2 labels |" in md
    assert "| mnli | acc | 12 | 33.33 | 33.33 | 1/3 labels |" in md
    assert "| squad1 | f1 | 4 | 50.00 | n/a | trivial answer:" in md
    # the search: every arch at chance on every task, and the summary says so first
    assert "all 2 archs the search evaluated scored at chance on every task" in md
    assert "| 1 | 2 | 2 **AT CHANCE** |" in md
    assert s.chosen["flags"] == {"mnli": [AT_CHANCE], "squad1": [AT_CHANCE]}
    # the final model: SST-2-style at the majority rate and collapsed (the saved model always
    # answers label 0), MNLI-style at chance
    assert s.final_flags == {"sst-2": [AT_MAJORITY], "mnli": [AT_CHANCE]}
    [pred] = s.final_predictions["sst-2"]
    assert pred.counts == {"0": 20, "1": 0} and pred.flag == COLLAPSED
    assert pred.rescored == pytest.approx(60.0)  # the saved model re-scored on dev
    assert ("| sst-2 | 60.00 **AT MAJORITY** | 50.00 | 60.00 | seed 42: 0 20, 1 0 **COLLAPSED** |"
            in md)
    assert "no saved model mnli_seed42" in md
    # side by side with the default-ratio arch: measured both, and BERT-base too
    assert "| | chosen (searched) | default ratios |" in md
    assert f"| arch | `{CHOSEN.short()}` | `{DEFAULT.short()}` |" in md
    assert "| final sst-2 | 60.00 **AT MAJORITY** | 71.00 |" in md
    assert "| final mnli | 33.00 **AT CHANCE** | 45.00 |" in md
    assert "| final mean score | 46.50 | 58.00 |" in md
    assert "measured speedup vs BERT-base" in md
    assert s.measured_bert_base_ms == pytest.approx(BERT_BASE.flops() / 1e6)
    assert s.default["measured_ms"] == pytest.approx(DEFAULT.flops() / 1e6)
    assert s.measured_ms == pytest.approx(CHOSEN.flops() / 1e6)
    js = json.loads(js_path.read_text())
    assert js["final_predictions"]["sst-2"][0]["flag"] == COLLAPSED
    assert js["levels"]["sst-2"]["majority"] == pytest.approx(60.0)
    assert js["default"]["arch"] == str(DEFAULT)
    assert js["measured_speedup_bert_base"] == pytest.approx(
        s.measured_bert_base_ms / s.measured_ms)


def test_summary_without_task_data_or_default_still_flags_by_label_count(pipeline_files):
    f = pipeline_files
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, final_results=f["final"])
    md = format_summary(s)
    assert s.chosen["flags"] == {"mnli": [AT_CHANCE], "squad1": []}  # SQuAD chance unknown
    assert "| squad1 | f1 | - | n/a | n/a | n/a (no --task_data) |" in md
    assert "no --task_data for it" in md and "default ratios" not in md


def test_summary_names_a_missing_supernet_stage(pipeline_files):
    """Without before/after results (no supernet stage ran), the note alone says what the
    search sliced; with none of either, nothing is said."""
    f = pipeline_files
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, stage_note="none: the reordered copy, never trained")
    assert "The supernet stage: none: the reordered copy, never trained." in format_summary(s)
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2)
    assert "supernet stage" not in format_summary(s)


def test_default_further_must_hold_the_default_arch(pipeline_files):
    f = pipeline_files
    with pytest.raises(UserError, match="not the default-ratio arch"):
        build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, default_arch=CHOSEN, default_further=f["default_further"])


def test_summary_when_the_search_chose_default_ratios_itself(pipeline_files):
    """No table comparing an arch with itself: one line says the search chose BERT's ratios."""
    f = pipeline_files
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, final_results=f["final"], default_arch=CHOSEN)
    md = format_summary(s)
    assert "chose an arch with BERT's default ratios" in md and f"`{CHOSEN.short()}`" in md
    assert "| | chosen (searched) | default ratios |" not in md


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "experiments/summarize.py", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_print_default_arch_cli(pipeline_files):
    f = pipeline_files
    r = _cli("--results", str(f["search"]), "--print_default_arch", "--time_pt",
             str(f["tmp"] / "time.pt"), "--supernet", str(f["supernet"]),
             "--hidden_size_space", "32", "64", "--head_num_space", "1", "2")
    assert r.returncode == 0, r.stderr
    got = Arch.parse(r.stdout)
    space = SearchSpace(scheme=Scheme.MLM, layers=(1, 2), hidden=(32, 64), ffn=(128, 256),
                        heads=(1, 2), head_dim=32, hidden_step=16, ffn_step=32)
    chosen = evaluated_archs(f["search"])[0].arch
    assert got == matching_default_arch(_cost_predictor(), chosen, space)
    assert got.ffn == 4 * got.hidden and got.qkv == got.hidden
    r = _cli("--results", str(f["search"]), "--print_default_arch")
    assert r.returncode == 2 and "--time_pt, --supernet" in r.stderr
    r = _cli("--results", str(f["search"]), "--supernet", "s", "--time_pt", "t",
             "--output_dir", "o", "--task_data", "mnli")
    assert r.returncode == 2 and "TASK=DIR" in r.stderr
    r = _cli("--results", str(f["search"]), "--supernet", "s", "--time_pt", "t",
             "--output_dir", "o", "--hidden_step", "4")
    assert r.returncode == 2 and "only --print_default_arch" in r.stderr


# ---- fitness against latency --------------------------------------------------------------------

def test_latency_scores_and_plot_on_a_synthetic_results_file(tmp_path):
    from superbert.report.plots import latency_scores, plot_latency_vs_score

    a, b, c = Arch(1, 64, 1, 32, 128), Arch(2, 64, 2, 64, 256), Arch(2, 128, 4, 128, 512)
    (tmp_path / "gen_1.cands").write_text(f"{a}\n{b}\n")
    (tmp_path / "gen_2.cands").write_text(f"{c}\n")
    (tmp_path / "r").write_text("".join(_block("sst-2", x, s) + _block("squad1", x, s - 20)
                                        for x, s in ((a, 60.0), (b, 70.0), (c, 65.0))))
    evaluated = evaluated_archs(tmp_path / "r", [tmp_path / "gen_1.cands",
                                                 tmp_path / "gen_2.cands"])
    pred = _cost_predictor(base_ms=10.0)
    window = LatencyWindow(10.0, 2.0, 0.5, 1.5, "the reference L2/d128")
    data = latency_scores(evaluated, pred, {b: 4.2, DEFAULT_RATIO: 3.0}, Arch(2, 128, 4, 128, 512),
                          10.0, window, {"chosen": (b, {"sst-2": 80.0, "mnli": 50.0}),
                                         "default ratios": (DEFAULT_RATIO, {"sst-2": 75.0})})
    # one point per evaluated arch, at its predicted latency unless the summary measured it
    assert [(p.arch, p.generation, p.fitness) for p in data.points] == [
        (str(a), 1, 50.0), (str(b), 1, 60.0), (str(c), 2, 55.0)]
    assert [p.latency_ms for p in data.points] == pytest.approx(
        [pred.predict_one(a), 4.2, pred.predict_one(c)])
    chosen, default = data.marked
    assert (chosen.role, chosen.latency_ms, chosen.measured, chosen.fitness, chosen.final_mean) \
        == ("chosen", 4.2, True, 60.0, 65.0)
    assert default.fitness is None and default.final_mean == 75.0  # never evaluated by the search
    assert data.window_ms == pytest.approx((2.5, 7.5)) and data.reference_ms == 10.0
    js = json.loads(json.dumps(data.to_json()))
    assert [p["latency_ms"] for p in js["points"]] == pytest.approx(
        [p.latency_ms for p in data.points])
    png = plot_latency_vs_score(tmp_path / "l.png", data)
    assert png.read_bytes()[:4] == b"\x89PNG"
    # no window recorded (an older search) and nothing marked: still a plot
    bare = latency_scores(evaluated, pred, {}, Arch(2, 128, 4, 128, 512), 10.0)
    assert bare.window_ms is None and bare.marked == []
    assert plot_latency_vs_score(tmp_path / "bare.png", bare).is_file()


DEFAULT_RATIO = Arch(1, 64, 2, 64, 256)


def test_summary_links_the_latency_plot_and_holds_its_points(pipeline_files):
    f = pipeline_files
    write_window(f["gens"][-1], LatencyWindow(BASE.flops() / 1e6, 1.5, 0.5, 1.5, "the base"))
    out = f["tmp"] / "summary"
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, final_results=f["final"], default_arch=DEFAULT,
                      default_final_results=f["default_final"],
                      latency_plot=out / "latency_vs_score.png")
    md_path, js_path = write_summary(s, out)
    md = md_path.read_text()
    assert "[latency_vs_score.png](latency_vs_score.png)" in md
    assert "every arch the search evaluated (2)" in md and "target window" in md
    js = json.loads(js_path.read_text())["latency_vs_score"]
    assert {p["arch"] for p in js["points"]} == {str(CHOSEN), str(OTHER)}
    [chosen] = [p for p in js["points"] if p["arch"] == str(CHOSEN)]
    assert chosen["measured_ms"] == pytest.approx(CHOSEN.flops() / 1e6)  # the FakeTimer's
    assert [m["role"] for m in js["marked"]] == ["chosen", "default ratios"]
    assert js["marked"][1]["final_mean"] == pytest.approx(58.0)
    assert (out / "latency_vs_score.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_times_in_the_searched_runtime_and_names_the_shipped_model(pipeline_files,
                                                                            monkeypatch):
    from dataclasses import replace

    f = pipeline_files
    timed = []

    class RecordingTimer(FakeTimer):
        def _t(self, arch):
            timed.append((self.protocol.backend, arch))
            return FakeTimer._t(self, arch)

        time = time_reference = _t

        def close(self):
            pass

    monkeypatch.setattr(timing, "Timer", RecordingTimer)
    # a search for ONNX Runtime INT8: time.pt fitted on its timings
    replace(_cost_predictor(base_ms=BASE.flops() / 1e6),
            backend="onnxruntime-int8").save(f["tmp"] / "time.pt")
    # the deploy stage's output: the chosen arch's ORT scores and its two exports
    deployed = f["tmp"] / "deployed"
    deployed.mkdir()
    (deployed / "subbert.results").write_text("".join(format_results_block(
        TaskResult("sst-2", CHOSEN, 1000, score, None, 1.0, 10, 42, runtime=runtime))
        for runtime, score in (("onnxruntime-fp32", 0.6), ("onnxruntime-int8", 0.59))))
    for name, precision in (("sst-2_seed42.onnx", "fp32"), ("sst-2_seed42.int8.onnx", "int8")):
        (deployed / name).write_bytes(b"")
        (deployed / f"{name}.json").write_text(json.dumps(
            {"format": "superbert-onnx", "precision": precision}))
    s = build_summary(f["search"], f["gens"], f["supernet"], f["tmp"] / "time.pt", BASE,
                      infer_cnt=2, final_results=f["final"], task_data=f["task_data"],
                      deployed_results=deployed / "subbert.results")
    assert s.runtime == "onnxruntime-int8"
    # the main table in the searched runtime; the deployment table adds the two others, the
    # searched one not timed twice
    main = [a for b, a in timed if b == "onnxruntime-int8"]
    assert set(main) == {CHOSEN, BASE, BERT_BASE}
    assert {b for b, _ in timed} == {"onnxruntime-int8", "torch", "onnxruntime"}
    for backend in ("torch", "onnxruntime"):
        assert {a for b, a in timed if b == backend} == {CHOSEN, BASE}
    d = s.deployed
    assert d.searched == "onnxruntime-int8" and d.shipped == str(deployed / "sst-2_seed42.int8.onnx")
    assert d.latency_ms["onnxruntime-int8"] == pytest.approx(s.measured_ms)
    assert d.speedup("onnxruntime-int8") == pytest.approx(s.measured_speedup)
    assert d.predicted_speedup == pytest.approx(s.predicted_speedup)
    md = format_summary(s)
    assert "with ONNX Runtime INT8, the runtime the search targeted" in md
    assert "| | torch (eager) | ONNX Runtime FP32 | ONNX Runtime INT8 (searched for, shipped) |" in md
    assert f"| predicted speedup vs `{BASE.short()}` | - | - | {s.predicted_speedup:.2f}x |" in md
    gap = s.measured_speedup / s.predicted_speedup - 1
    assert (f"shipped: `{deployed / 'sst-2_seed42.int8.onnx'}`. Speedup in it: predicted "
            f"{s.predicted_speedup:.2f}x, measured {s.measured_speedup:.2f}x "
            f"({100 * gap:+.1f}%, {'within' if abs(gap) <= 0.1 else 'NOT within'} 10%)") in md
    assert json.loads(json.dumps(s.to_json()))["runtime"] == "onnxruntime-int8"
