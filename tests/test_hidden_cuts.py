"""Outlier channels of the residual stream and per-width LayerNorm gains (hidden_cuts.py)."""
import pytest
import torch

from superbert.errors import UserError
from superbert.growth import Importance, compute_permutation
from superbert.hidden_cuts import (StreamOutliers, apply_layernorm_gains, layernorm_gains,
                                   outlier_aware_scores, stream_outliers)
from superbert.modeling import AutoTinyBertForMaskedLM, SampleConfig
from tests.helpers import tiny_config


def model_with_outlier(channel=5, scale=40.0):
    """A tiny supernet whose embedding LayerNorm writes one channel `scale` times larger, so
    the residual stream carries an outlier from the first LayerNorm on."""
    torch.manual_seed(0)
    model = AutoTinyBertForMaskedLM(tiny_config("kd", layers=2, hidden=32, heads=4, qkv=32,
                                                ffn=64))
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight[channel] = scale
        model.bert.embeddings.LayerNorm.bias[channel] = scale
    return model


def batches(n=2):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, 2000, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_stream_outliers_finds_the_planted_channel_and_restores_the_model():
    model = model_with_outlier(channel=5).train()
    model.set_sample_config(SampleConfig(1, 16, 4, 16, 32))
    found = stream_outliers(model, batches())
    assert found.places == ("emb", "L0.att", "L0.out", "L1.att", "L1.out")
    assert 5 in found.channels and len(found.channels) <= 3
    assert float(found.ratio[1, 5]) >= 6.0  # seen at the first layer's LayerNorm input
    assert 0.0 < float(found.share[1]) <= 1.0
    assert model.training and model.active_sample().hidden == 16
    # A model without a planted outlier (ordinary random weights) has none at this threshold.
    torch.manual_seed(0)
    plain = AutoTinyBertForMaskedLM(tiny_config("kd", layers=2, hidden=32, heads=4, qkv=32,
                                                ffn=64))
    assert stream_outliers(plain, batches()).channels == ()
    with pytest.raises(UserError, match="empty"):
        stream_outliers(plain, [])


def test_outlier_aware_scores_rank_outliers_last_and_keep_the_rest():
    cfg = tiny_config("kd", layers=1, hidden=8, heads=2, qkv=8, ffn=4)
    hidden = torch.tensor([5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0], dtype=torch.float64)
    scores = Importance(hidden, (torch.arange(4.0),), (torch.ones(2),),
                        (torch.ones(2, 4),), (torch.ones(2, 4),))
    outliers = StreamOutliers(("emb",), torch.ones(1, 8), torch.zeros(1), (1, 5), 6.0)
    perm = compute_permutation(outlier_aware_scores(scores, outliers), "kd", cfg)
    assert perm.hidden == (3, 7, 0, 4, 6, 2, 1, 5)  # by score, then the outliers by score
    assert perm.ffn == compute_permutation(scores, "kd", cfg).ffn


def test_layernorm_gains_restore_the_full_width_scale():
    model = model_with_outlier(channel=0, scale=10.0)  # the outlier leads: kept by any slice
    assert torch.allclose(layernorm_gains(model, batches(), 32), torch.ones(5, dtype=torch.float64))
    gains = layernorm_gains(model, batches(), 16)
    assert gains.shape == (5,) and float(gains[1]) > 1.2  # the first layer's input
    # Moving the outlier out of the kept channels makes the slice's deviation smaller instead.
    assert float(layernorm_gains(model_with_outlier(channel=31), batches(), 16)[1]) < 1.0
    # Applied at width 16, the first attention LayerNorm's input is normalised to about its
    # full-width scale on the kept channels.
    bias = model.bert.embeddings.LayerNorm.bias.clone()
    ids, mask = batches(1)[0]["input_ids"], batches(1)[0]["attention_mask"]
    seen = {}
    ln = model.bert.encoder.layer[0].attention.output.LayerNorm
    ln.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out))
    with torch.no_grad():
        model.bert(ids, mask)
        full = seen["out"][..., :16] - ln.bias[:16]
        model.set_sample_config(SampleConfig(2, 16, 4, 32, 64))
        model.bert(ids, mask)
        before = seen["out"] - ln.bias[:16]
        apply_layernorm_gains(model, gains)
        model.bert(ids, mask)
        after = seen["out"] - ln.bias[:16]
    real = mask.bool()

    def gap(x):
        return abs(float(x[real].norm(dim=-1).mean() / full[real].norm(dim=-1).mean()) - 1.0)
    assert gap(after) < gap(before) / 2
    assert torch.equal(model.bert.embeddings.LayerNorm.bias, bias)  # weights only
    with pytest.raises(UserError, match="gains"):
        apply_layernorm_gains(model, gains[:3])
    with pytest.raises(UserError, match="outside"):
        layernorm_gains(model, batches(), 40)
