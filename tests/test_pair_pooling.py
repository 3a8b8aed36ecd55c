"""Segment-aware classifiers (`classifier_pooling = "pair"`, evaluator `--pooling pair`): the
features [mean A, mean B, |A-B|, A*B] by hand, the 4-block head sliced per block, slice ==
extracted == saved and reloaded (ours, transformers) == ONNX Runtime, reordering, the evaluator."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from helpers import VOCAB, assert_same_values, make_tiny_supernet
from superbert.arch import Arch, format_arch_lines
from superbert.finetuning.run import POOLING_WORDS
from superbert.growth import Permutation, apply_permutation
from superbert.hf import load_model, save_model
from superbert.modeling import (CLASSIFIER_POOLINGS, AutoTinyBertForSequenceClassification,
                                extract_submodel, pair_pool)
from test_classifier import PROXY, run_inproc
from test_modeling import archs_to_check, batch, space_for
from test_pooling import classifier, logits
from test_tasks import write_glue_task


def by_hand(hidden, mask, types):
    """One row at a time, with Python's own loops over the kept tokens of each segment."""
    rows = []
    for b in range(hidden.shape[0]):
        a_tokens = [hidden[b, t] for t in range(hidden.shape[1]) if mask[b, t] and types[b, t] == 0]
        b_tokens = [hidden[b, t] for t in range(hidden.shape[1]) if mask[b, t] and types[b, t] == 1]
        a = sum(a_tokens) / len(a_tokens)
        m = sum(b_tokens) / len(b_tokens) if b_tokens else torch.zeros(hidden.shape[-1])
        rows.append(torch.cat([a, m, (a - m).abs(), a * m]))
    return torch.stack(rows)


def test_pair_features_by_hand():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 5, generator=g)
    #                   [CLS] A  A [SEP] B  B [SEP]
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1],
                          [0, 0, 0, 1, 1, 1, 1],   # B's last two tokens are padding
                          [0, 0, 0, 0, 0, 1, 1]])  # one sentence: type 1 only on padding
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 1, 0, 0]])
    padded = hidden.clone()
    padded[mask == 0] = 1e4  # padding must not reach the features
    got = pair_pool(padded, mask, types)
    assert got.shape == (3, 20)
    assert_same_values(got, by_hand(hidden, mask, types), "pair features")
    # no second segment: b is zeros, so the features are [a, 0, |a|, 0]
    a = hidden[2, :5].mean(0)
    assert_same_values(got[2], torch.cat([a, torch.zeros(5), a.abs(), torch.zeros(5)]), "one sentence")
    # no token types: one segment of every kept token; no mask either: every token
    assert_same_values(pair_pool(padded[2:], mask[2:], None), got[2:], "no token types")
    a = hidden.mean(1)
    zeros = torch.zeros_like(a)
    assert_same_values(pair_pool(hidden, None, None), torch.cat([a, zeros, a.abs(), zeros], -1),
                       "no mask")
    assert_same_values(pair_pool(hidden, None, types),
                       by_hand(hidden, torch.ones_like(mask), types), "no mask, two segments")


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_slice_equals_extracted_equals_reloaded_equals_onnx(tmp_path, scheme):
    supernet_dir = make_tiny_supernet(tmp_path / "super", scheme, heads=4, qkv=64)
    supernet = classifier(supernet_dir, "pair")
    D, n = supernet.config.hidden_size, supernet.num_labels
    assert supernet.classifier.weight.shape == (n, 4 * D)
    ids, mask, segments = batch()  # padding, and a row whose second segment is all padding
    space = space_for(supernet.config)
    archs = archs_to_check(space, n=2, seed=3 if scheme == "mlm" else 4)
    for arch in archs:
        supernet.set_sample_config(arch)
        sliced = logits(supernet, ids, mask, segments)
        with torch.no_grad():  # the slice by hand: the first d features of each of the 4 blocks
            enc = supernet.bert(ids, mask, segments).last_hidden_state
            blocks = supernet.classifier.weight.view(n, 4, D)[:, :, : arch.hidden]
            head = blocks.reshape(n, 4 * arch.hidden)
            want = pair_pool(enc, mask, segments) @ head.T + supernet.classifier.bias
        assert_same_values(sliced, want, f"slice {arch}")
        dense = extract_submodel(supernet, arch).eval()
        assert torch.equal(dense.classifier.weight, head), arch
        assert_same_values(logits(dense, ids, mask, segments), sliced, f"extracted {arch}")
    arch = archs[-1]  # a random arch (not the full width)
    assert arch.hidden < D, arch
    supernet.set_sample_config(arch)
    sliced = logits(supernet, ids, mask, segments)
    out = save_model(extract_submodel(supernet, arch), tmp_path / "sub", VOCAB)
    saved = json.loads((out / "config.json").read_text())
    assert saved["classifier_pooling"] == "pair" and saved["model_type"] == "autotinybert"
    ours = load_model(out, AutoTinyBertForSequenceClassification)
    assert_same_values(logits(ours, ids, mask, segments), sliced, "reloaded")
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert_same_values(logits(hf, ids, mask, segments), sliced, "transformers-loaded")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from superbert.deploy import OrtModel, export_onnx
    files = export_onnx(out, head="auto")
    ids, mask, segments = batch(B=4, T=15, seed=3)  # other shapes than the export's
    got = torch.as_tensor(OrtModel(files.fp32)(ids, mask, segments)["logits"])
    assert_same_values(got, logits(ours, ids, mask, segments), "ONNX Runtime")


def test_reordering_keeps_a_pair_classifier(tmp_path):
    """apply_permutation permutes each of the 4 blocks of the head's columns alike."""
    supernet = classifier(make_tiny_supernet(tmp_path / "super", "mlm", heads=4, qkv=64), "pair")
    ids, mask, segments = batch()
    before = logits(supernet, ids, mask, segments)
    ident = Permutation.identity(supernet.config)
    hidden = tuple(torch.randperm(supernet.config.hidden_size,
                                  generator=torch.Generator().manual_seed(1)).tolist())
    apply_permutation(supernet, Permutation(hidden, ident.ffn, ident.qk, ident.v))
    assert_same_values(logits(supernet, ids, mask, segments), before, "reordered")


def test_evaluator_pooling_pair(tmp_path, caplog):
    assert set(POOLING_WORDS) == set(CLASSIFIER_POOLINGS)
    supernet_dir = make_tiny_supernet(tmp_path / "super", "mlm", layers=2, hidden=32, heads=2,
                                      ffn=64, max_positions=128)
    write_glue_task(tmp_path / "RTE", "rte", n_train=16, n_dev=8)
    cands = tmp_path / "one.cands"
    cands.write_text(format_arch_lines([Arch(1, 24, 1, 16, 32)]))
    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="superbert.finetuning.run"):
        run_inproc(["--data_dir", str(tmp_path / "RTE"), "--model", str(supernet_dir),
                    "--task_name", "rte", "--output_dir", str(out), "--arches_file", str(cands),
                    "--save_best_model", "--no_cuda", "--pooling", "pair", *PROXY])
    assert "classifiers read [mean A, mean B, |A-B|, A*B]" in caplog.text
    saved = json.loads((out / "rte_seed42" / "config.json").read_text())
    assert saved["classifier_pooling"] == "pair"
    model = load_model(out / "rte_seed42", AutoTinyBertForSequenceClassification)
    assert model.classifier.weight.shape == (2, 4 * 24)
