"""SuperBERT slicing: supernet slice == extracted model == Hugging Face-loaded model."""
import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig, BertModel

from superbert.arch import Arch, SearchSpace
from superbert.hf import extract_to_dir, load_model
from superbert.modeling import (AutoTinyBertForMaskedLM, AutoTinyBertModel, extract_submodel)
from tests.helpers import (assert_same_values, make_tiny_supernet, scaled_tolerance, tiny_config)


def batch(vocab=30522, B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # padding in the batch
    mask[2, 5:] = 0
    segments = torch.zeros(B, T, dtype=torch.long)
    segments[:, 6:] = 1
    return ids, mask, segments


def space_for(config):
    """The whole space the tiny supernet holds, fine steps so extremes are reachable."""
    return SearchSpace.for_supernet(config, hidden=(8, config.hidden_size), hidden_step=4,
                                    ffn=(4, config.intermediate_size), ffn_step=4,
                                    qkv=(config.num_attention_heads, config.qkv_size))


def archs_to_check(space, n=6, seed=0):
    rng = random.Random(seed)
    return [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(n)]


def outputs(model, ids, mask, segments):
    """Encoder, MLM logits and the KD outputs of a ForMaskedLM model.

    transformers' own BertForMaskedLM (what a qkv == hidden directory loads as) has no pooler
    and no dense_fit: only the encoder and the logits are compared there.
    """
    with torch.no_grad():
        if not isinstance(model, AutoTinyBertForMaskedLM):
            h = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments)
            return {"hidden": h.last_hidden_state, "logits": model.cls(h.last_hidden_state)}
        enc = model.bert(ids, mask, segments, output_attention_scores=True)
        logits = model.cls(enc.last_hidden_state)
        fit = model.bert.dense_fit(enc.last_hidden_state)
    return {"hidden": enc.last_hidden_state, "pooled": enc.pooler_output, "logits": logits,
            "fit": fit, "scores": enc.last_attention_scores}


def assert_close(a, b, what):
    for key in b:
        assert_same_values(a[key], b[key], f"{what}: {key}")


@pytest.mark.parametrize("scheme, heads, qkv", [("mlm", 4, 64), ("kd", 4, 64),
                                                ("mlm", 3, 96), ("kd", 3, 96)])
def test_slice_equals_extracted_equals_hf_loaded(tmp_path, scheme, heads, qkv):
    # Heads 16 or 32 wide: head width comes from the supernet, not a hard-coded 64.
    supernet_dir = make_tiny_supernet(tmp_path / "super", scheme, heads=heads, qkv=qkv,
                                      fit_size=40)
    supernet = load_model(supernet_dir).eval()
    config = supernet.config
    ids, mask, segments = batch()
    for i, arch in enumerate(archs_to_check(space_for(config))):
        supernet.set_sample_config(arch)
        sliced = outputs(supernet, ids, mask, segments)
        assert sliced["hidden"].shape[-1] == arch.hidden
        assert sliced["scores"].shape[1] == arch.heads
        dense = extract_submodel(supernet, arch).eval()
        assert_close(sliced, outputs(dense, ids, mask, segments), f"extracted {arch.short()}")
        if i < 3:  # through the disk and transformers' Auto classes
            out = tmp_path / f"sub{i}"
            extract_to_dir(supernet_dir, arch, out)
            hf = AutoModelForMaskedLM.from_pretrained(out).eval()
            assert_close(sliced, outputs(hf, ids, mask, segments), f"HF-loaded {arch.short()}")
            base = AutoModel.from_pretrained(out).eval()
            with torch.no_grad():
                h = base(input_ids=ids, attention_mask=mask, token_type_ids=segments)
            assert_same_values(h.last_hidden_state, sliced["hidden"], "AutoModel hidden")


def test_kd_scheme_keeps_the_leading_dims_of_every_head():
    config = tiny_config("kd", heads=4, qkv=64, hidden=64)
    model = AutoTinyBertModel(config)
    model.set_sample_config(Arch(1, 64, 4, 32, 128))
    q = model.encoder.layer[0].attention.self.query
    rows = torch.cat([torch.arange(16 * h, 16 * h + 8) for h in range(4)])
    assert torch.equal(q.active_weight(), q.weight[rows])
    out = model.encoder.layer[0].attention.output.dense
    assert torch.equal(out.active_weight(), out.weight[:, rows])
    mlm = AutoTinyBertModel(tiny_config("mlm", heads=4, qkv=64, hidden=64))
    mlm.set_sample_config(Arch(1, 64, 2, 32, 128))
    q = mlm.encoder.layer[0].attention.self.query
    assert torch.equal(q.active_weight(), q.weight[:32])  # the first two heads


def test_full_width_equals_transformers_bert_with_padding():
    config = tiny_config("mlm", layers=2, hidden=64, heads=4, ffn=128)
    ours = AutoTinyBertModel(config).eval()
    hf_config = BertConfig(vocab_size=config.vocab_size, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=config.max_position_embeddings)
    theirs = BertModel(hf_config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    ids, mask, segments = batch()
    with torch.no_grad():
        a = ours(ids, mask, segments)
        b = theirs(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    real = mask.bool()
    assert_same_values(a.last_hidden_state[real], b.last_hidden_state[real], "hidden")
    assert_same_values(a.pooler_output, b.pooler_output, "pooled")


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_gradients_land_only_in_the_sliced_regions(scheme):
    config = tiny_config(scheme, layers=3, hidden=64, heads=4, qkv=64, ffn=128, fit_size=32)
    model = AutoTinyBertForMaskedLM(config)
    arch = Arch(2, 40, 4 if scheme == "kd" else 2, 32, 72)
    model.set_sample_config(arch)
    ids, mask, segments = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    out = model.bert(ids, mask, segments, output_attention_scores=True)
    loss = model.masked_lm_loss(out.last_hidden_state, labels)
    loss = loss + model.bert.dense_fit(out.last_hidden_state).square().mean()
    loss = loss + out.last_attention_scores.square().mean()
    loss.backward()

    def check(param, active):
        grad = param.grad
        assert grad is not None and grad.shape == param.shape
        assert torch.count_nonzero(grad[~active]) == 0
        assert torch.count_nonzero(grad[active]) > 0

    d, f = arch.hidden, arch.ffn
    emb = model.bert.embeddings.word_embeddings.weight
    cols = torch.zeros_like(emb, dtype=torch.bool)
    cols[:, :d] = True
    check(emb, cols)
    layer0 = model.bert.encoder.layer[0]
    rows = torch.zeros(64, dtype=torch.bool)
    if scheme == "kd":
        for h in range(4):
            rows[16 * h:16 * h + 8] = True
    else:
        rows[:32] = True
    q_active = rows[:, None] & (torch.arange(64) < d)[None, :]
    check(layer0.attention.self.query.weight, q_active)
    check(layer0.attention.output.dense.weight, (torch.arange(64) < d)[:, None] & rows[None, :])
    ffn_active = (torch.arange(128) < f)[:, None] & (torch.arange(64) < d)[None, :]
    check(layer0.intermediate.dense.weight, ffn_active)
    check(layer0.output.LayerNorm.weight, torch.arange(64) < d)
    for p in model.bert.encoder.layer[2].parameters():  # above the active depth
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_remote_code_copy_loads_without_our_package(tmp_path):
    supernet_dir = make_tiny_supernet(tmp_path / "super", "kd", heads=4, qkv=64, fit_size=32)
    arch = Arch(2, 48, 4, 32, 96)
    sub, out = extract_to_dir(supernet_dir, arch, tmp_path / "sub")
    ids, mask, segments = batch()
    with torch.no_grad():
        expected = sub(ids, mask, segments).logits
    torch.save({"ids": ids, "mask": mask, "segments": segments, "expected": expected},
               tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path = [p for p in sys.path if p not in ('', '.')]
        assert 'superbert' not in sys.modules
        from transformers import AutoModelForMaskedLM
        m = AutoModelForMaskedLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        assert not type(m).__module__.startswith('superbert'), type(m).__module__
        io = torch.load({str(tmp_path / 'io.pt')!r})
        with torch.no_grad():
            got = m(input_ids=io['ids'], attention_mask=io['mask'], token_type_ids=io['segments']).logits
        print((got - io['expected']).abs().max().item())
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                            "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) <= scaled_tolerance(expected)


def test_plain_bert_checkpoints_are_plain_bert(tmp_path):
    """qkv == hidden: the extracted directory is an ordinary `bert` checkpoint."""
    supernet_dir = make_tiny_supernet(tmp_path / "super", "mlm", heads=4, qkv=64)
    arch = Arch(2, 64, 4, 64, 96)
    sub, out = extract_to_dir(supernet_dir, arch, tmp_path / "sub")
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    hf = BertModel.from_pretrained(out).eval()
    ids, mask, segments = batch()
    with torch.no_grad():
        a = sub.bert(ids, mask, segments).last_hidden_state
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state
    assert_same_values(a, b, "hidden")
