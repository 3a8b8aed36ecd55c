"""GLUE / SQuAD readers, features, decoding and the official metrics (no model training here)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from superbert.errors import UserError
from superbert.hf import bundled_vocab_path, load_tokenizer
from superbert.tasks import TASK_DEFAULTS, TASKS, canonical_task
from superbert.tasks import glue, squad
from superbert.tasks.metrics import (compute_f1_v2, glue_metrics, normalize_answer,
                                     squad_v1_evaluate, squad_v2_evaluate)

WORDS = ("the cat sat on a mat while an old dog slept near the warm fire and "
         "birds sang outside in tall green trees").split()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(bundled_vocab_path(), do_lower_case=True)


def _sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + '. "Quoted" bit'


# ---- GLUE files in the distributed layouts ------------------------------------------------------
MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                     "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]


def _glue_rows(task: str, n: int, rng: random.Random, dev: bool) -> tuple[list[str] | None, list[list[str]]]:
    """(header, rows) for `task` as the GLUE distribution lays it out. Labels depend on the
    first word so a model can learn something."""
    rows = []
    for i in range(n):
        a, b = _sentence(rng), _sentence(rng)
        y = int("cat" in a.lower())
        if task == "cola":
            rows.append(["gj04", str(y), "" if y else "*", a])
        elif task in ("mnli", "mnli-mm"):
            label = ("contradiction", "entailment", "neutral")[i % 3 if not y else 1]
            row = [str(i), str(1000 + i), f"{i}e", "fiction", f"( {a} )", f"( {b} )",
                   f"(ROOT {a})", f"(ROOT {b})", a, b, label]
            if dev:
                row += [label, label, "neutral", label]
            rows.append(row + [label])
        elif task == "mrpc":
            rows.append([str(y), str(100 + i), str(200 + i), a, b])
        elif task == "sst-2":
            rows.append([a, str(y)])
        elif task == "sts-b":
            rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none",
                         "none", a, b, f"{(y * 3 + rng.random() * 2):.3f}"])
        elif task == "qqp":
            rows.append([str(i), str(2 * i), str(2 * i + 1), a, b, str(y)])
        elif task in ("qnli", "rte"):
            rows.append([str(i), a, b, ("entailment", "not_entailment")[y]])
        elif task == "wnli":
            rows.append([str(i), a, b, str(y)])
    headers = {
        "cola": None,
        "mnli": MNLI_DEV_HEADER if dev else MNLI_TRAIN_HEADER,
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "sst-2": ["sentence", "label"],
        "sts-b": ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                  "sentence1", "sentence2", "score"],
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "qnli": ["index", "question", "sentence", "label"],
        "rte": ["index", "sentence1", "sentence2", "label"],
        "wnli": ["index", "sentence1", "sentence2", "label"],
    }
    headers["mnli-mm"] = headers["mnli"]
    return headers[task], rows


def write_glue_task(root: Path, task: str, n_train: int = 24, n_dev: int = 12, seed: int = 0) -> Path:
    """A task directory with train/dev files in the real GLUE layout (MNLI: both dev files)."""
    rng = random.Random(seed)
    spec = glue.GLUE[task]
    root.mkdir(parents=True, exist_ok=True)
    files = [(spec.train_file, n_train, False), (spec.dev_file, n_dev, True)]
    if task in ("mnli", "mnli-mm"):
        files = [("train.tsv", n_train, False), ("dev_matched.tsv", n_dev, True),
                 ("dev_mismatched.tsv", n_dev, True)]
    for name, n, dev in files:
        header, rows = _glue_rows(task, n, rng, dev)
        lines = ([header] if header else []) + rows
        (root / name).write_text("".join("\t".join(r) + "\n" for r in lines), encoding="utf-8")
    return root


CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to "
           "Normandy, a region in France. They were descended from Norse raiders and pirates "
           "from Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear "
           "fealty to King Charles III of West Francia. Through generations of assimilation "
           "and mixing with the native Frankish and Roman-Gaulish populations, their "
           "descendants would gradually merge with the Carolingian-based cultures of West "
           "Francia. The distinct cultural and ethnic identity of the Normans emerged "
           "initially in the first half of the 10th century, and it continued to evolve over "
           "the succeeding centuries.")


def squad_json(version_2: bool, n_copies: int = 1) -> dict:
    """A SQuAD file whose paragraph is long enough to need several windows at seq 64."""
    qas = []
    for k in range(n_copies):
        for qid, question, answer in (
                ("q1", "In what country is Normandy located?", "France"),
                ("q2", "Who was the Norse leader?", "Rollo"),
                ("q3", "What cultures did the descendants merge with?",
                 "the Carolingian-based cultures of West Francia")):
            start = CONTEXT.index(answer)
            answers = [{"text": answer, "answer_start": start}]
            if k == 0 and qid == "q1":
                answers.append({"text": "a region in France",
                                "answer_start": CONTEXT.index("a region in France")})
            qa = {"id": f"{qid}-{k}", "question": question, "answers": answers}
            if version_2:
                qa["is_impossible"] = False
            qas.append(qa)
        if version_2:
            qas.append({"id": f"q4-{k}", "question": "What is the capital of Mars?",
                        "answers": [], "is_impossible": True,
                        "plausible_answers": [{"text": "Normandy", "answer_start": 93}]})
    return {"version": "v2.0" if version_2 else "1.1",
            "data": [{"title": "Normans", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


def write_squad_task(root: Path, version_2: bool = False, n_copies: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = "v2.0" if version_2 else "v1.1"
    data = json.dumps(squad_json(version_2, n_copies))
    (root / f"train-{suffix}.json").write_text(data, encoding="utf-8")
    (root / f"dev-{suffix}.json").write_text(data, encoding="utf-8")
    return root


# ---- GLUE ---------------------------------------------------------------------------------------
def test_task_names_and_defaults():
    assert canonical_task("squad") == "squad1"
    assert canonical_task("MNLI") == "mnli"
    assert set(TASK_DEFAULTS) == set(TASKS)
    assert TASK_DEFAULTS["mnli"].train_batch_size == 32 and TASK_DEFAULTS["mnli"].eval_step == 500
    assert TASK_DEFAULTS["squad1"].max_seq_length == 384
    with pytest.raises(UserError, match="unknown task 'mnlii'"):
        canonical_task("mnlii")


@pytest.mark.parametrize("task", list(glue.GLUE))
def test_glue_layout_parses(tmp_path, task, tokenizer):
    d = write_glue_task(tmp_path / task, task, n_train=10, n_dev=6)
    spec = glue.GLUE[task]
    train = glue.read_examples(spec, d, "train")
    dev = glue.read_examples(spec, d, "dev")
    assert len(train) == 10 and len(dev) == 6
    header, rows = _glue_rows(task, 10, random.Random(0), False)
    # Columns land where the GLUE distribution puts them (quotes kept verbatim).
    assert train[0].text_a == rows[0][spec.text_a]
    assert '"Quoted"' in train[0].text_a
    if spec.text_b is not None:
        assert train[0].text_b == rows[0][spec.text_b]
    else:
        assert train[0].text_b is None
    feats = glue.convert_examples_to_features(train, spec, tokenizer, 32)
    assert feats.input_ids.shape == (10, 32)
    assert int(feats.lengths.max()) <= 32
    ids = feats.input_ids[0, : int(feats.lengths[0])].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    if spec.is_regression:
        assert feats.labels.dtype == torch.float32
    else:
        assert feats.labels.dtype == torch.long and int(feats.labels.max()) < spec.num_labels
        assert train[0].label in spec.labels
    if spec.text_b is not None:  # segment 1 for the second sentence
        assert feats.token_type_ids[0].max() == 1


def test_mnli_mismatched_and_dev_columns(tmp_path):
    d = write_glue_task(tmp_path / "MNLI", "mnli", n_train=6, n_dev=5)
    assert len((d / "train.tsv").read_text().splitlines()[1].split("\t")) == 12
    assert len((d / "dev_matched.tsv").read_text().splitlines()[1].split("\t")) == 16
    mm = glue.read_examples(glue.GLUE["mnli-mm"], d, "dev")
    assert len(mm) == 5 and mm[0].label in ("contradiction", "entailment", "neutral")
    assert glue.GLUE["mnli-mm"].dev_file == "dev_mismatched.tsv"


def test_cola_has_no_header(tmp_path):
    d = write_glue_task(tmp_path / "CoLA", "cola", n_train=4, n_dev=3)
    assert len(glue.read_examples(glue.GLUE["cola"], d, "train")) == 4  # first row is data


def test_glue_bad_files(tmp_path):
    spec = glue.GLUE["rte"]
    with pytest.raises(UserError, match="GLUE file not found"):
        glue.read_examples(spec, tmp_path, "train")
    d = write_glue_task(tmp_path / "RTE", "rte", n_train=4, n_dev=3)
    text = (d / "train.tsv").read_text().splitlines()
    (d / "train.tsv").write_text("\n".join(text[:2] + ["7\tonly two"] + text[2:]) + "\n")
    with pytest.raises(UserError, match=r"train.tsv:3: expected at least 4"):
        glue.read_examples(spec, d, "train")
    (d / "train.tsv").write_text(text[0] + "\n0\ta\tb\tmaybe\n")
    with pytest.raises(UserError, match="unknown rte label 'maybe'"):
        glue.read_examples(spec, d, "train")
    (d / "dev.tsv").write_bytes(b"index\tsentence1\n\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        glue.read_examples(spec, d, "dev")
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(UserError, match="no rte examples"):
        glue.read_examples(spec, d, "dev")
    sts = write_glue_task(tmp_path / "STS-B", "sts-b", n_train=3, n_dev=3)
    lines = (sts / "train.tsv").read_text().splitlines()
    lines[1] = "\t".join(lines[1].split("\t")[:-1] + ["high"])
    (sts / "train.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="score 'high' is not a number"):
        glue.read_examples(glue.GLUE["sts-b"], sts, "train")


def test_qqp_skips_short_rows(tmp_path):
    d = write_glue_task(tmp_path / "QQP", "qqp", n_train=4, n_dev=3)
    with open(d / "train.tsv", "a") as fh:
        fh.write("99\tbroken line\n")
    assert len(glue.read_examples(glue.GLUE["qqp"], d, "train")) == 4


def test_glue_metrics():
    preds, labels = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert glue_metrics("mnli", preds, labels) == {"acc": 0.75}
    m = glue_metrics("mrpc", preds, labels)
    assert m["f1"] == pytest.approx(0.8) and m["acc_and_f1"] == pytest.approx(0.775)
    assert glue_metrics("cola", preds, labels)["mcc"] == pytest.approx(0.5773502691896258)
    s = glue_metrics("sts-b", np.array([1.0, 2.0, 3.0, 4.5]), np.array([1.0, 2.5, 2.9, 5.0]))
    assert s["spearmanr"] == pytest.approx(1.0)
    assert s["corr"] == pytest.approx((s["pearson"] + 1.0) / 2)


# ---- SQuAD --------------------------------------------------------------------------------------
def test_doc_windows_and_max_context():
    spans = squad.doc_windows(10, 4, 2)
    assert spans == [(0, 4), (2, 4), (4, 4), (6, 4)]
    # token 3: window 0 gives (3 left, 0 right), window 1 (1, 2) -> window 1 wins
    assert squad.is_max_context(spans, 1, 3) and not squad.is_max_context(spans, 0, 3)
    assert squad.doc_windows(0, 4, 2) == [(0, 0)]


@pytest.mark.parametrize("version_2", [False, True])
def test_squad_windows_and_decoding(tmp_path, tokenizer, version_2):
    d = write_squad_task(tmp_path / "SQuAD", version_2)
    name = "v2.0" if version_2 else "v1.1"
    train = squad.read_squad(d / f"train-{name}.json", True, version_2)
    dev = squad.read_squad(d / f"dev-{name}.json", False, version_2)
    assert len(dev) == (4 if version_2 else 3)
    assert dev[0].answers == ("France", "a region in France")
    feats = squad.convert_examples_to_features(train, tokenizer, 64, 16, 12, is_training=True)
    per_example = np.bincount(feats.example_index)
    assert (per_example >= 3).all()  # the long context needs several windows at seq 64
    # Each answer is labelled in >= 1 window, and the labelled tokens spell the answer.
    for i, ex in enumerate(train):
        rows = [f for f, e in enumerate(feats.example_index) if e == i]
        hits = [f for f in rows if feats.start_positions[f] > 0]
        if ex.is_impossible:
            assert not hits
            continue
        assert hits
        for f in hits:
            s, t = int(feats.start_positions[f]), int(feats.end_positions[f])
            text = tokenizer.decode(feats.input_ids[f, s:t + 1]).replace(" - ", "-")
            assert text == ex.answers[0].lower()
    # Decoding: logits pointing at the gold span give the gold text, exactly.
    efeats = squad.convert_examples_to_features(dev, tokenizer, 64, 16, 12, is_training=False)
    T = efeats.input_ids.shape[1]
    starts = np.zeros((len(efeats), T), dtype=np.float32)
    ends = np.zeros((len(efeats), T), dtype=np.float32)
    for f, e in enumerate(efeats.example_index):
        ex = dev[e]
        if ex.is_impossible:
            starts[f, 0] = ends[f, 0] = 5.0  # null answer strongly preferred
            continue
        a0 = ex.answer_start
        a1 = a0 + len(ex.answers[0])
        offs = efeats.offsets[f]
        toks = [k for k, o in enumerate(offs) if o is not None and o[1] > a0 and o[0] < a1]
        if toks and offs[toks[0]][0] <= a0 and offs[toks[-1]][1] >= a1:
            starts[f, toks[0]] = 10.0
            ends[f, toks[-1]] = 10.0
    preds, nbest, odds = squad.decode_predictions(dev, efeats, starts, ends, 20, 30, version_2)
    for ex in dev:
        assert preds[ex.qas_id] == ("" if ex.is_impossible else ex.answers[0])
        assert abs(sum(x["probability"] for x in nbest[ex.qas_id]) - 1) < 1e-6
    assert bool(odds) == version_2
    if version_2:
        assert odds["q4-0"] > 0 and odds["q1-0"] < 0
        scores = squad_v2_evaluate(squad.gold_answers(dev), preds)
        assert scores["exact"] == 100.0 and scores["NoAns_total"] == 1
    else:
        assert squad_v1_evaluate(squad.gold_answers(dev), preds) == {"exact_match": 100.0,
                                                                      "f1": 100.0}


def test_squad_max_answer_length_and_context_only(tokenizer):
    ex = squad.SquadExample("x", "Who?", "Alpha beta gamma delta epsilon.", ("beta",), 6)
    feats = squad.convert_examples_to_features([ex], tokenizer, 32, 8, 8, is_training=False)
    T = feats.input_ids.shape[1]
    s = np.zeros((1, T), np.float32)
    e = np.zeros((1, T), np.float32)
    s[0, 1] = e[0, 1] = 100.0  # a question token: never an answer
    q_len = len(tokenizer("Who?", add_special_tokens=False)["input_ids"])
    first = q_len + 2
    s[0, first] = 9.0   # "alpha"
    e[0, first + 3] = 9.0  # "delta": 4 tokens long
    preds, _, _ = squad.decode_predictions([ex], feats, s, e, 20, 30)
    assert preds["x"] == "Alpha beta gamma delta"
    preds, _, _ = squad.decode_predictions([ex], feats, s, e, 20, 2)  # too long now
    assert preds["x"] != "Alpha beta gamma delta"


def test_squad_bad_files(tmp_path):
    with pytest.raises(UserError, match="SQuAD file not found"):
        squad.read_squad(tmp_path / "nope.json", True, False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        squad.read_squad(bad, True, False)
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(UserError, match="is not a SQuAD file"):
        squad.read_squad(bad, True, False)
    bad.write_text(json.dumps(squad_json(True)))
    with pytest.raises(UserError, match="squad2"):
        squad.read_squad(bad, True, False)


# ---- official SQuAD metrics on hand-made predictions --------------------------------------------
def test_normalize_answer():
    assert normalize_answer("The  Cat, an Apple!") == "cat apple"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("A.") == ""


def test_squad_v1_official_numbers():
    gold = {"a": ["Denver Broncos", "The Denver Broncos"], "b": ["Santa Clara, California"],
            "c": ["the 1990s"], "d": ["Rollo"]}
    preds = {"a": "the Denver Broncos.", "b": "Santa Clara", "c": "an 1990s!", "d": "Rollo the"}
    out = squad_v1_evaluate(gold, preds)
    # a: EM 1; b: P=1 R=2/3 -> F1 0.8; c: EM 1 (articles + punctuation); d: EM 1
    assert out["exact_match"] == pytest.approx(75.0)
    assert out["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 1) / 4)
    # A missing prediction counts 0; F1 takes the max over gold answers.
    out = squad_v1_evaluate({"a": ["x y z", "x"], "b": ["q"]}, {"a": "x"})
    assert out == {"exact_match": 50.0, "f1": 50.0}


def test_squad_v2_official_numbers():
    gold = {"has": ["blue whale"], "none": [], "none2": [], "junk": ["the"]}
    preds = {"has": "a blue", "none": "", "none2": "something", "junk": ""}
    out = squad_v2_evaluate(gold, preds)
    # has: P=1 R=1/2 -> F1 2/3; none: 1/1; none2: 0/0; junk gold normalises to "" -> unanswerable
    assert out["exact"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0 + 1) / 4)
    assert out["HasAns_total"] == 1 and out["NoAns_total"] == 3
    assert compute_f1_v2("", "") == 1.0 and compute_f1_v2("x", "") == 0.0
