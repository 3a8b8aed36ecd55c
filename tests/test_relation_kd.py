"""Relation KD (MiniLMv2 Q-Q / K-K / V-V relations) and the last-layer Q/K/V it reads."""
import math

import pytest
import torch
from transformers import BertConfig, BertModel

from superbert.distill import (load_teacher, relation_kd_count, relation_kd_loss,
                               relation_kd_sums, relation_log_probs)
from superbert.errors import UserError
from superbert.growth import Permutation, apply_permutation
from superbert.modeling import AutoTinyBertForMaskedLM, SampleConfig
from tests.helpers import assert_same_values, tiny_config


def qkv(B=2, T=7, W=24, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, W, generator=g).requires_grad_(requires_grad)
                 for _ in range(3))


def padded_mask(B=2, T=7):
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    return mask


def test_identical_inputs_give_zero_and_different_give_positive():
    t = qkv(W=24)
    mask = padded_mask()
    assert abs(float(relation_kd_loss(t, t, mask, heads=4))) < 1e-6
    assert float(relation_kd_loss(qkv(W=24, seed=1), t, mask, heads=4)) > 1e-3


def test_value_is_the_mean_kl_of_the_relation_rows():
    """One head, one sequence of 3 tokens, written out by hand."""
    s, t = qkv(B=1, T=3, W=4, seed=2), qkv(B=1, T=3, W=4, seed=3)
    total = 0.0
    for x, y in zip(s, t):
        ps = (x[0] @ x[0].T / 2.0).softmax(-1)  # sqrt(4) = 2
        pt = (y[0] @ y[0].T / 2.0).softmax(-1)
        total += float((pt * (pt.log() - ps.log())).sum())
    assert relation_kd_count(None, 1, 3, 1) == 9
    assert math.isclose(float(relation_kd_loss(s, t, None, heads=1)), total / 9, rel_tol=1e-5)


def test_invariant_to_a_permutation_of_the_feature_dims_within_relation_heads():
    """Permuting the student's Q/K/V dims consistently inside each relation head's block
    (what a KD-scheme reorder does inside each attention head) leaves the loss unchanged;
    moving dims across relation heads does not (the loss is not blind to the split)."""
    s, t = qkv(W=24, seed=4), qkv(W=32, seed=5)
    mask = padded_mask()
    g = torch.Generator().manual_seed(6)
    perm = torch.cat([h * 6 + torch.randperm(6, generator=g) for h in range(4)])
    permuted = tuple(x[..., perm] for x in s)
    base = relation_kd_loss(s, t, mask, heads=4)
    assert_same_values(relation_kd_loss(permuted, t, mask, heads=4), base, "loss")
    across = torch.roll(torch.arange(24), 3)
    moved = relation_kd_loss(tuple(x[..., across] for x in s), t, mask, heads=4)
    assert abs(float(moved - base)) > 1e-4


def test_invariant_to_a_permutation_of_the_student_models_hidden_units():
    """A supernet whose hidden units (residual stream) are permuted computes the same last-layer
    Q/K/V, so the relation loss against a teacher is unchanged, also for a narrow slice."""
    torch.manual_seed(0)
    model = AutoTinyBertForMaskedLM(tiny_config("kd", layers=2, hidden=32, heads=4, qkv=32,
                                                ffn=64)).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    mask = padded_mask()
    teacher = qkv(W=48, seed=7)
    with torch.no_grad():
        before = model.bert(ids, mask, output_last_qkv=True).last_qkv
    cfg = model.config
    hidden = tuple(torch.randperm(32, generator=torch.Generator().manual_seed(8)).tolist())
    ident = Permutation.identity(cfg)
    apply_permutation(model, Permutation(hidden, ident.ffn, ident.qk, ident.v))
    with torch.no_grad():
        after = model.bert(ids, mask, output_last_qkv=True).last_qkv
    for a, b in zip(after, before):
        assert_same_values(a, b, "Q/K/V after a hidden permutation")
    assert_same_values(relation_kd_loss(after, teacher, mask, 4),
                       relation_kd_loss(before, teacher, mask, 4), "loss")


def test_padded_tokens_are_ignored():
    s, t = qkv(W=24, seed=9), qkv(W=24, seed=10)
    mask = padded_mask()
    base = relation_kd_sums(s, t, mask, heads=4)
    s2 = tuple(x.clone() for x in s)
    t2 = tuple(x.clone() for x in t)
    for x in s2 + t2:
        x[1, 4:] = torch.randn(3, 24) * 10  # padded positions of sequence 1
    assert_same_values(relation_kd_sums(s2, t2, mask, heads=4), base, "summed KL")
    assert relation_kd_count(mask, 2, 7, 4) == 3 * 4 * (7 + 4)
    # Without the mask the same change does count.
    assert abs(float(relation_kd_sums(s2, t2, None, 4) - relation_kd_sums(s, t, None, 4))) > 1e-3
    # Padded keys get probability zero.
    logp = relation_log_probs(s[0], 4, mask)
    assert float(logp[1, :, :4, 4:].exp().max()) == 0.0


def test_widths_must_split_into_the_relation_heads():
    with pytest.raises(UserError, match="relation heads do not divide"):
        relation_kd_loss(qkv(W=20), qkv(W=24), None, heads=8)


def test_gradient_flows_to_the_student_only_through_real_tokens():
    s = qkv(W=24, seed=11, requires_grad=True)
    t = qkv(W=36, seed=12)
    mask = padded_mask()
    relation_kd_loss(s, t, mask, heads=12).backward()
    for x in s:
        assert x.grad is not None and float(x.grad[:, :4].abs().sum()) > 0
        assert float(x.grad[1, 4:].abs().max()) == 0.0  # padding: no gradient


def _teacher(tmp_path, hidden=48, heads=12):
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=heads, intermediate_size=64)).save_pretrained(tmp_path)
    return load_teacher(str(tmp_path))


def test_teacher_qkv_are_its_last_layer_projections(tmp_path):
    teacher = _teacher(tmp_path)
    ids = torch.randint(1000, 2000, (2, 7))
    mask = padded_mask()
    out = teacher(ids, mask, None, return_qkv=True)
    assert teacher(ids, mask, None).qkv is None  # only when asked for
    enc = teacher.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    att = teacher.encoder.encoder.layer[-1].attention.self
    x = enc.hidden_states[-2]
    with torch.no_grad():
        for got, proj in zip(out.qkv, (att.query, att.key, att.value)):
            assert_same_values(got, proj(x), "teacher Q/K/V")
    # The scores the attention-MSE objective uses are unchanged: Q.K^T per head.
    q, k = (y.view(2, 7, 12, 4).transpose(1, 2) for y in out.qkv[:2])
    assert_same_values(out.scores, q @ k.transpose(-1, -2) / 2.0, "scores")


@pytest.mark.parametrize("scheme,sample", [
    ("kd", SampleConfig(2, 24, 12, 24, 32)),   # narrower than the teacher, 12 heads of 2
    ("mlm", SampleConfig(2, 32, 4, 16, 64)),   # 4 heads of the supernet's 12
])
def test_student_slices_against_a_wider_teacher(tmp_path, scheme, sample):
    """The student's last-layer Q/K/V come out at the slice's width, the loss runs against a
    12-head teacher 48 wide (4 relation heads divide both), and its gradient reaches the
    student's weights, first layer included."""
    teacher = _teacher(tmp_path)
    torch.manual_seed(2)
    model = AutoTinyBertForMaskedLM(tiny_config(scheme, layers=2, hidden=32, heads=12,
                                                qkv=48 if scheme == "mlm" else 36, ffn=64))
    model.set_sample_config(sample)
    ids = torch.randint(1000, 2000, (2, 7))
    mask = padded_mask()
    out = model.bert(ids, mask, output_last_qkv=True, output_attention_scores=True)
    assert all(x.shape == (2, 7, sample.qkv) for x in out.last_qkv)
    # The recomputed Q and K are the ones the layer used: their per-head product is its scores.
    hd = sample.qkv // sample.heads
    q, k = (y.view(2, 7, sample.heads, hd).transpose(1, 2) for y in out.last_qkv[:2])
    assert_same_values(out.last_attention_scores, q @ k.transpose(-1, -2) / math.sqrt(hd),
                       "student scores")
    loss = relation_kd_loss(out.last_qkv, teacher(ids, mask, None, return_qkv=True).qkv, mask, 4)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    first = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert first is not None and float(first.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.encoder.parameters())


def test_outputs_without_the_flag_are_unchanged():
    torch.manual_seed(3)
    model = AutoTinyBertForMaskedLM(tiny_config("kd", layers=2, hidden=32, heads=4, qkv=32,
                                                ffn=64)).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        plain = model.bert(ids, padded_mask())
        both = model.bert(ids, padded_mask(), output_last_qkv=True)
    assert plain.last_qkv is None and len(plain.to_tuple()) == 2
    assert torch.equal(plain.last_hidden_state, both.last_hidden_state)
