"""Mean-pooling sequence classifiers (`classifier_pooling = "mean"`, evaluator `--pooling`):
slice == extracted == Hugging Face-loaded == ONNX Runtime, padding-blind, saved and refused."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForSequenceClassification

from helpers import VOCAB, make_tiny_supernet
from superbert.arch import Arch, format_arch_lines
from superbert.errors import UserError
from superbert.hf import load_model, save_model
from superbert.modeling import AutoTinyBertForSequenceClassification, extract_submodel, mean_pool
from superbert_run_en_classifier import parse_config
from test_classifier import PROXY, run_inproc
from test_modeling import archs_to_check, batch, space_for
from test_tasks import write_glue_task

TOL = 1e-5


def classifier(supernet_dir, pooling="mean", num_labels=3, seed=5):
    model = load_model(supernet_dir, AutoTinyBertForSequenceClassification, num_labels=num_labels,
                       classifier_pooling=pooling).eval()
    torch.manual_seed(seed)
    with torch.no_grad():  # a head that is not the zero-bias init
        model.classifier.weight.normal_(0, 0.5)
        model.classifier.bias.normal_(0, 0.5)
    return model


def logits(model, ids, mask, segments):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=segments).logits


@pytest.mark.parametrize("scheme, heads, qkv", [("mlm", 4, 64), ("kd", 4, 64), ("kd", 3, 96)])
def test_slice_equals_extracted_equals_hf_loaded(tmp_path, scheme, heads, qkv):
    supernet_dir = make_tiny_supernet(tmp_path / "super", scheme, heads=heads, qkv=qkv)
    supernet = classifier(supernet_dir)
    ids, mask, segments = batch()
    archs = archs_to_check(space_for(supernet.config), n=4, seed=1)
    # qkv == hidden: the arch that would otherwise be saved as plain transformers BERT
    archs.append(Arch(2, 48, heads, 48, 96))
    for i, arch in enumerate(archs):
        supernet.set_sample_config(arch)
        sliced = logits(supernet, ids, mask, segments)
        dense = extract_submodel(supernet, arch).eval()
        assert (logits(dense, ids, mask, segments) - sliced).abs().max() <= TOL, arch
        if i in (0, len(archs) - 1):
            out = save_model(dense, tmp_path / f"sub{i}", VOCAB)
            saved = json.loads((out / "config.json").read_text())
            assert saved["classifier_pooling"] == "mean"
            # never a plain `bert` checkpoint: transformers' BERT classifier reads [CLS]
            assert saved["model_type"] == "autotinybert"
            hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
            assert (logits(hf.eval(), ids, mask, segments) - sliced).abs().max() <= TOL, arch


def test_mean_is_over_real_tokens_and_cls_is_unchanged(tmp_path):
    supernet_dir = make_tiny_supernet(tmp_path / "super", "kd", heads=4, qkv=64)
    mean_model, cls_model = classifier(supernet_dir, "mean"), classifier(supernet_dir, "cls")
    ids, mask, segments = batch()
    with torch.no_grad():
        enc = mean_model.bert(ids, mask, segments)
        manual = torch.stack([enc.last_hidden_state[b, mask[b].bool()].mean(0)
                              for b in range(ids.shape[0])])
        want_mean = mean_model.classifier(manual)
        want_cls = cls_model.classifier(enc.pooler_output)
    assert (logits(mean_model, ids, mask, segments) - want_mean).abs().max() <= TOL
    assert (logits(cls_model, ids, mask, segments) - want_cls).abs().max() <= TOL
    # no field transformers' BERT lacks in a [CLS] model's config
    out = save_model(extract_submodel(cls_model, Arch(2, 48, 4, 48, 96)), tmp_path / "c", VOCAB)
    saved = json.loads((out / "config.json").read_text())
    assert "classifier_pooling" not in saved and saved["model_type"] == "bert"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6), st.integers(0, 10_000))
def test_padding_never_changes_the_mean(length, pad, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, length + pad, 5, generator=g)
    mask = torch.tensor([[1] * length + [0] * pad])
    alone = mean_pool(hidden[:, :length], None)
    assert torch.allclose(mean_pool(hidden, mask), alone, atol=1e-6)


def test_onnx_export_of_a_mean_pooling_classifier(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from superbert.deploy import OrtModel, export_onnx
    supernet_dir = make_tiny_supernet(tmp_path / "super", "kd", heads=4, qkv=64)
    model = extract_submodel(classifier(supernet_dir), Arch(2, 40, 4, 24, 72))
    out = save_model(model, tmp_path / "best", VOCAB)
    files = export_onnx(out, head="auto")
    torch_model = load_model(out, AutoTinyBertForSequenceClassification)
    assert torch_model.config.classifier_pooling == "mean"
    ids, mask, segments = batch(B=4, T=15, seed=3)
    got = OrtModel(files.fp32)(ids, mask, segments)["logits"]
    want = logits(torch_model, ids, mask, segments)
    assert float(abs(torch.as_tensor(got) - want).max()) <= TOL


def test_evaluator_pooling_flag_saves_and_is_refused_with_onnx(tmp_path):
    supernet_dir = make_tiny_supernet(tmp_path / "super", "mlm", layers=2, hidden=32, heads=2,
                                      ffn=64, max_positions=128)
    write_glue_task(tmp_path / "SST-2", "sst-2", n_train=16, n_dev=8)
    cands = tmp_path / "one.cands"
    cands.write_text(format_arch_lines([Arch(1, 24, 1, 16, 32)]))
    out = tmp_path / "ft"
    run_inproc(["--data_dir", str(tmp_path / "SST-2"), "--model", str(supernet_dir),
                "--task_name", "sst-2", "--output_dir", str(out), "--arches_file", str(cands),
                "--save_best_model", "--no_cuda", "--pooling", "mean", *PROXY])
    saved = json.loads((out / "sst-2_seed42" / "config.json").read_text())
    assert saved["classifier_pooling"] == "mean"
    with pytest.raises(UserError, match="--pooling does not apply"):
        parse_config(["--model", "m", "--output_dir", "o", "--data_dir", "a", "--task_name",
                      "sst-2", "--onnx", "--pooling", "mean"])


def test_unknown_pooling_in_a_config_is_one_user_error(tmp_path):
    supernet_dir = make_tiny_supernet(tmp_path / "super", "kd", heads=4, qkv=64)
    config = json.loads((supernet_dir / "config.json").read_text())
    config["classifier_pooling"] = "max"
    (supernet_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="'classifier_pooling' is 'max', not one of cls, mean, pair"):
        load_model(supernet_dir, AutoTinyBertForSequenceClassification)
