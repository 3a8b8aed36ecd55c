"""Growing a SuperPLM from a pretrained BERT: load it as a supernet, then reorder its units so
that the leading slices the supernet trains and searches keep the most important ones.

A weight-sharing supernet slices *leading* units: the first `d` hidden features, the first `f`
FFN neurons of a layer, the first `h` heads (MLM scheme) or the leading `q/H` dims of every head
(KD scheme). Trained from scratch it learns to put what matters first; a pretrained checkpoint
has its important units anywhere. DynaBERT's network rewiring (and Minitron's width pruning)
fix that with a function-preserving permutation: score every unit, sort by descending score.

    model, fresh = supernet_from_pretrained(checkpoint_dir, "kd", fit_size=teacher_width)
    perm = reorder(model, sample_batches, "kd", "taylor")   # in place; the outputs are unchanged

`sample_batches` is any iterable (read once) of mappings with `input_ids` and optionally
`attention_mask`, `token_type_ids`. New unit j of a reordered model is old unit `perm[j]`; the
permutation travels as `permutation.json` beside a checkpoint's weights (`permutation_record`,
`read_permutation`), so a grown model can be traced back to the checkpoint's own units.

Units and what a permutation moves with them (`apply_permutation`):
- hidden feature (residual stream): embedding columns, every LayerNorm entry, the input columns
  of every projection reading the stream (Q/K/V, FFN in, pooler, MLM transform, dense_fit, task
  heads) and the output rows of every projection writing it (attention/FFN output, pooler, MLM
  transform). The decoder is tied to the word embeddings and so follows them; its bias is over
  the vocabulary and does not move.
- FFN neuron: intermediate rows, output-dense columns.
- attention: Q and K rows share one permutation (q.k^T is a sum over dims, so permuting both
  alike keeps it), V rows share another with the attention output dense's columns; both map
  each head slot onto one whole source head. MLM scheme: whole heads move. KD scheme: heads
  stay, and the dims inside each head are sorted (Q/K dims jointly, V dims on their own).

Importance measures (`Measure`), both over the real (unpadded) tokens of the sample batches:
- `magnitude`: mean |activation| x the norm of the weights that read the unit. FFN neuron:
  the output dense's column; V dim: the attention output dense's column; head: the sum over its
  V dims; Q/K dim d: mean|q_d| x mean|k_d| (the size of its term in q.k^T: what reads q_d is
  k_d); hidden feature: at every place the stream is written (embedding LayerNorm, each
  layer's two LayerNorms) mean |feature| x the column norm of the next reader (Q/K/V of the
  next layer, the FFN input, 1 for the final output), each place's scores normalised to sum
  one (so no layer's scale dominates) and then added.
- `taylor`: first-order Taylor, |activation x gradient| summed over tokens (DynaBERT), of a
  loss chosen to be informative at full width. The objective a grown supernet trains with
  (self-distillation from the same checkpoint) is exactly zero at full width with zero
  gradient, and an encoder-only checkpoint (MiniLM) has no MLM head, so neither loss can be
  used as is. We use a random probe of the output instead: L = sum over real tokens of
  <eps, h_last>, eps ~ N(0, I) drawn afresh per batch (seeded), h_last the full-width encoder
  output. Its gradient with respect to a unit's gate is eps^T J, J the change of the output
  when the unit is scaled; so |a x g| at a token is, in expectation, sqrt(2/pi) times the L2
  norm of the first-order change of the whole output when that unit is dropped at that token.
  That is what the KD loss at reduced width measures (its Gauss-Newton term is ||J||^2), is
  independent of any fresh head, and costs one backward per batch. A head is one gate over its
  V dims (|sum over its dims of a x g| per token); a Q/K dim adds its Q and K terms; a hidden
  feature is one gate over all the places it is written (|sum over places of a x g| per token).

The scores are computed at full width in eval mode (the model's sample and mode are restored),
without touching parameter gradients.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .arch import Scheme
from .cli import Choice
from .configuration import AutoTinyBertConfig
from .errors import UserError
from .modeling import (AutoTinyBertForMaskedLM, AutoTinyBertForQuestionAnswering,
                       AutoTinyBertForSequenceClassification, AutoTinyBertModel,
                       AutoTinyBertPreTrainedModel, full_sample)

logger = logging.getLogger(__name__)

PERMUTATION_FILE = "permutation.json"


class Measure(Choice):
    """How unit importance is scored (see the module docstring)."""

    TAYLOR = "taylor"
    MAGNITUDE = "magnitude"

    @classmethod
    def label(cls) -> str:
        return "importance measure"


# ---- a supernet from a pretrained checkpoint ---------------------------------------------------
def supernet_from_pretrained(model_dir: str | os.PathLike, scheme: "str | Scheme",
                             fit_size: int | None = None
                             ) -> tuple[AutoTinyBertForMaskedLM, list[str]]:
    """A supernet whose dims are the checkpoint's, with its weights, in eval mode.

    Reads any HF BERT/ELECTRA encoder, a released AutoTinyBERT checkpoint or one of ours.
    Parameters the checkpoint lacks (the MLM head of an encoder, `dense_fit` when `fit_size` is
    asked for, a missing pooler) are initialised fresh and returned, by parameter name, as the
    second value; a fresh `dense_fit` as wide as the checkpoint starts as the identity (and
    `apply_permutation` keeps it mapping onto the teacher's, unpermuted, features). Wrong-shape
    weights and a scheme the checkpoint cannot be sliced in are UserErrors.
    """
    from .hf import load_config, load_weights, normalize_keys, read_config_json, \
        read_state_dict, resolve_model_dir

    scheme = Scheme.parse(scheme)
    model_dir = resolve_model_dir(str(model_dir), need_weights=True)
    raw = read_config_json(model_dir)
    kind = raw.get("position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise UserError(f"{model_dir}: position_embedding_type {kind!r} cannot be grown into a "
                        f"SuperBERT (absolute positions only)")
    config = load_config(model_dir, scheme.value)  # qkv % heads, saved-vs-requested scheme
    check_sliceable(config, scheme, str(model_dir))
    state = normalize_keys(read_state_dict(model_dir))
    saved_fit = state.get("bert.dense_fit.weight")
    if fit_size is not None:
        if isinstance(fit_size, bool) or not isinstance(fit_size, int) or fit_size < 1:
            raise UserError(f"fit_size must be a positive integer, got {fit_size!r}")
        if saved_fit is not None and saved_fit.shape[0] != fit_size:
            raise UserError(f"{model_dir}: its dense_fit projects to {saved_fit.shape[0]}, but "
                            f"a teacher {fit_size} wide was asked for; use the teacher it was "
                            f"distilled from")
        config.fit_size = fit_size
    elif saved_fit is not None:
        config.fit_size = int(saved_fit.shape[0])
    model = AutoTinyBertForMaskedLM(config)
    load_weights(model, state, str(model_dir))  # shapes checked there (UserError)
    own = [k for k in model.state_dict() if not k.startswith("cls.predictions.decoder.")]
    fresh = sorted(k for k in own if k not in state)
    fit = model.bert.dense_fit
    if "bert.dense_fit.weight" in fresh and fit.out_features == fit.in_features:
        # A teacher as wide as the checkpoint is, when growing, usually the checkpoint itself:
        # the identity makes self-distillation start at zero loss at full width (a random
        # projection would first have to be learnt while it spoils the pretrained weights).
        with torch.no_grad():
            fit.weight.copy_(torch.eye(fit.out_features))
            fit.bias.zero_()
    return model.eval(), fresh


def check_sliceable(config: AutoTinyBertConfig, scheme: "str | Scheme", source: str) -> None:
    """The checkpoint's attention can be sliced in `scheme` (UserError otherwise): both
    schemes cut Q/K/V into `num_attention_heads` equal slots (MLM keeps whole slots, KD the
    leading dims of each), so the heads must divide the qkv size."""
    scheme = Scheme.parse(scheme)
    H, Q = config.num_attention_heads, config.qkv_size
    if Q % H:
        raise UserError(f"{source}: the {scheme.name} scheme slices attention by head, but "
                        f"{H} heads do not divide the qkv size {Q}")


# ---- importance --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Importance:
    """Per-unit scores (higher = more important), float64 on the CPU.

    hidden [D]; per layer: ffn [F], heads [H], qk [H, Q/H] (Q and K dims jointly), v [H, Q/H].
    """

    hidden: torch.Tensor
    ffn: tuple[torch.Tensor, ...]
    heads: tuple[torch.Tensor, ...]
    qk: tuple[torch.Tensor, ...]
    v: tuple[torch.Tensor, ...]


def batch_inputs(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise UserError("an importance batch must be a mapping with input_ids "
                        "(and optionally attention_mask, token_type_ids)")
    ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.to(device)
    segments = batch.get("token_type_ids")
    return ids, mask, None if segments is None else segments.to(device)


class _Recorder:
    """Forward hooks keeping the activations the scores read, per layer."""

    def __init__(self, base: AutoTinyBertModel):
        self.base = base
        self.acts: dict[tuple[str, int], torch.Tensor] = {}
        self.handles = []
        self._hook(base.embeddings.LayerNorm, ("stream", 0))
        for i, layer in enumerate(base.encoder.layer):
            self._hook(layer.attention.output.LayerNorm, ("stream", 2 * i + 1))
            self._hook(layer.output.LayerNorm, ("stream", 2 * i + 2))
            self._hook(layer.intermediate, ("ffn", i))
            self._hook(layer.attention.self, ("ctx", i))
            self._hook(layer.attention.self.query, ("q", i))
            self._hook(layer.attention.self.key, ("k", i))

    def _hook(self, module: nn.Module, key: tuple[str, int]) -> None:
        def keep(_module, _inputs, output):
            self.acts[key] = output[0] if isinstance(output, tuple) else output
        self.handles.append(module.register_forward_hook(keep))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _stream_readers(base: AutoTinyBertModel) -> list[torch.Tensor | None]:
    """Column norms [D] of what reads the stream after each place it is written (None: the
    final output, read as is)."""
    layers = base.encoder.layer
    norms: list[torch.Tensor | None] = []
    for i in range(2 * len(layers) + 1):
        if i == 2 * len(layers):
            norms.append(None)
        elif i % 2 == 0:  # embeddings or a layer's output: read by the next layer's Q/K/V
            att = layers[i // 2].attention.self
            w = torch.cat([att.query.weight, att.key.weight, att.value.weight])
            norms.append(w.detach().double().norm(dim=0).cpu())
        else:  # after attention: read by the FFN
            w = layers[i // 2].intermediate.dense.weight
            norms.append(w.detach().double().norm(dim=0).cpu())
    return norms


def importance_scores(model: AutoTinyBertPreTrainedModel, batches: Iterable[Mapping[str, Any]],
                      measure: "str | Measure" = Measure.TAYLOR, seed: int = 0) -> Importance:
    """Score every unit of `model` at full width on `batches` (see the module docstring)."""
    measure = Measure.parse(measure)
    base = model.base_model
    config = model.config
    L, D, F = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    H, Q = config.num_attention_heads, config.qkv_size
    dh = Q // H
    device = next(model.parameters()).device
    sums = {"hidden": torch.zeros(D, dtype=torch.float64),
            "ffn": torch.zeros(L, F, dtype=torch.float64),
            "heads": torch.zeros(L, H, dtype=torch.float64),
            "qk": torch.zeros(L, Q, dtype=torch.float64),
            "v": torch.zeros(L, Q, dtype=torch.float64),
            "q": torch.zeros(L, Q, dtype=torch.float64),
            "k": torch.zeros(L, Q, dtype=torch.float64),
            "stream": torch.zeros(2 * L + 1, D, dtype=torch.float64)}
    tokens = 0
    gen = torch.Generator().manual_seed(seed)
    was_sample, was_training = model.active_sample(), model.training
    model.set_sample_config(full_sample(config))
    model.eval()
    recorder = _Recorder(base)
    try:
        for batch in batches:
            ids, mask, segments = batch_inputs(batch, device)
            real = mask.bool()
            n = int(real.sum())
            if n == 0:
                continue
            tokens += n
            if measure == Measure.TAYLOR:
                _taylor_batch(base, ids, mask, segments, real, recorder, sums, gen, L, H, dh)
            else:
                with torch.no_grad():
                    base(ids, mask, segments)
                _magnitude_batch(real, recorder, sums, L)
            recorder.acts.clear()
    finally:
        recorder.close()
        model.set_sample_config(was_sample)
        model.train(was_training)
    if tokens == 0:
        raise UserError("no tokens to score importance on: the sample batches are empty")
    if measure == Measure.TAYLOR:
        qk, v, heads = sums["qk"], sums["v"], sums["heads"]
        ffn, hidden = sums["ffn"], sums["hidden"]
    else:
        qk, v, heads, ffn, hidden = _magnitude_scores(base, sums, tokens, L, H, dh)
    scores = Importance(hidden=hidden, ffn=tuple(ffn), heads=tuple(heads),
                        qk=tuple(qk.view(L, H, dh)), v=tuple(v.view(L, H, dh)))
    for t in (scores.hidden, *scores.ffn, *scores.heads, *scores.qk, *scores.v):
        if not torch.isfinite(t).all():
            raise UserError("importance scores are not finite: the model gives NaN or inf on "
                            "the sample batches")
    return scores


def _taylor_batch(base, ids, mask, segments, real, recorder, sums, gen, L, H, dh) -> None:
    with torch.enable_grad():
        # Gradients flow from the embedding output on: no parameter needs grad, none is touched.
        handle = base.embeddings.word_embeddings.register_forward_hook(
            lambda _m, _i, out: out.detach().requires_grad_(True))
        try:
            out = base(ids, mask, segments).last_hidden_state
        finally:
            handle.remove()
        probe = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
        loss = (out * probe * real[..., None]).sum()
        keys = list(recorder.acts)
        grads = torch.autograd.grad(loss, [recorder.acts[k] for k in keys], allow_unused=True)
    m = real[..., None].double()
    stream = 0.0
    for key, g in zip(keys, grads):
        kind, i = key
        a = recorder.acts[key].detach().double()
        ag = (a * (torch.zeros_like(a) if g is None else g.double())) * m  # [B, T, width]
        if kind == "stream":
            stream = stream + ag  # one gate per feature over every place it is written
        elif kind == "ffn":
            sums["ffn"][i] += ag.abs().sum((0, 1)).cpu()
        elif kind == "ctx":
            sums["v"][i] += ag.abs().sum((0, 1)).cpu()
            B, T, _ = ag.shape
            sums["heads"][i] += ag.view(B, T, H, dh).sum(-1).abs().sum((0, 1)).cpu()
        elif kind in ("q", "k"):
            sums["qk"][i] += ag.abs().sum((0, 1)).cpu()
    sums["hidden"] += stream.abs().sum((0, 1)).cpu()


def _magnitude_batch(real, recorder, sums, L) -> None:
    """Sums of |activation| over the real tokens (divided by the token count at the end)."""
    m = real[..., None].double()
    for (kind, i), a in recorder.acts.items():
        s = (a.detach().double().abs() * m).sum((0, 1)).cpu()
        if kind == "ctx":
            sums["v"][i] += s
        else:
            sums[kind][i] += s


def _magnitude_scores(base, sums, tokens, L, H, dh):
    layers = base.encoder.layer
    mean = {k: v / tokens for k, v in sums.items()}

    def col_norm(linear: nn.Linear) -> torch.Tensor:
        return linear.weight.detach().double().norm(dim=0).cpu()

    ffn = torch.stack([mean["ffn"][i] * col_norm(layers[i].output.dense) for i in range(L)])
    v = torch.stack([mean["v"][i] * col_norm(layers[i].attention.output.dense) for i in range(L)])
    heads = v.view(L, H, dh).sum(-1)
    qk = mean["q"] * mean["k"]
    hidden = torch.zeros_like(mean["stream"][0])
    for place, readers in enumerate(_stream_readers(base)):
        s = mean["stream"][place] * (1.0 if readers is None else readers)
        hidden += s / s.sum().clamp_min(torch.finfo(torch.float64).tiny)
    return qk, v, heads, ffn, hidden


# ---- permutations ------------------------------------------------------------------------------
Perm = tuple[int, ...]


@dataclass(frozen=True)
class Permutation:
    """Where every unit of a reordered model came from: new unit j is old unit `perm[j]`.

    hidden: [D]; per layer ffn: [F], qk: [Q] (Q and K rows), v: [Q] (V rows and the attention
    output dense's columns). Attention permutations map each head slot onto one whole source
    head, the same head for qk and v.
    """

    hidden: Perm
    ffn: tuple[Perm, ...]
    qk: tuple[Perm, ...]
    v: tuple[Perm, ...]

    @classmethod
    def identity(cls, config: AutoTinyBertConfig) -> "Permutation":
        L, Q = config.num_hidden_layers, config.qkv_size
        return cls(tuple(range(config.hidden_size)),
                   tuple(tuple(range(config.intermediate_size)) for _ in range(L)),
                   tuple(tuple(range(Q)) for _ in range(L)),
                   tuple(tuple(range(Q)) for _ in range(L)))

    def to_json(self) -> str:
        return json.dumps({"hidden": list(self.hidden), "ffn": [list(p) for p in self.ffn],
                           "qk": [list(p) for p in self.qk], "v": [list(p) for p in self.v]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, data: "str | Mapping[str, Any]") -> "Permutation":
        """From `to_json`'s text or its parsed dict; malformed input is a UserError."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise UserError(f"permutation is not valid JSON: {err}") from None
        if not isinstance(data, Mapping) or set(data) != {"hidden", "ffn", "qk", "v"}:
            raise UserError("permutation must be a JSON object with exactly the keys hidden, "
                            "ffn, qk, v")

        def ints(value: Any, what: str) -> Perm:
            if not isinstance(value, list) or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in value):
                raise UserError(f"permutation: {what} must be a list of integers")
            return tuple(value)

        def per_layer(name: str) -> tuple[Perm, ...]:
            value = data[name]
            if not isinstance(value, list):
                raise UserError(f"permutation: {name} must be a list (one entry per layer)")
            return tuple(ints(p, f"{name}[{i}]") for i, p in enumerate(value))

        perm = cls(ints(data["hidden"], "hidden"), per_layer("ffn"), per_layer("qk"),
                   per_layer("v"))
        if not len(perm.ffn) == len(perm.qk) == len(perm.v):
            raise UserError("permutation: ffn, qk and v must list the same number of layers")
        return perm

    def then(self, other: "Permutation") -> "Permutation":
        """This permutation followed by `other` (both relative to the model they were applied
        to): the permutation from the original model to the twice-reordered one."""
        def comp(a: Perm, b: Perm) -> Perm:
            return tuple(a[j] for j in b)

        if len(self.ffn) != len(other.ffn):
            raise UserError("cannot compose permutations of models with different depths")
        return Permutation(comp(self.hidden, other.hidden),
                           tuple(map(comp, self.ffn, other.ffn)),
                           tuple(map(comp, self.qk, other.qk)), tuple(map(comp, self.v, other.v)))

    def validate(self, config: AutoTinyBertConfig) -> None:
        """UserError unless this is a function-preserving permutation of a model of `config`."""
        L, D, F = config.num_hidden_layers, config.hidden_size, config.intermediate_size
        H, Q = config.num_attention_heads, config.qkv_size
        dh = Q // H

        def check(p: Perm, n: int, what: str) -> None:
            if len(p) != n or sorted(p) != list(range(n)):
                raise UserError(f"permutation: {what} is not a permutation of 0..{n - 1}")

        check(self.hidden, D, "hidden")
        if len(self.ffn) != L:
            raise UserError(f"permutation has {len(self.ffn)} layers, the model {L}")
        for i in range(L):
            check(self.ffn[i], F, f"ffn[{i}]")
            check(self.qk[i], Q, f"qk[{i}]")
            check(self.v[i], Q, f"v[{i}]")
            for slot in range(H):
                block = slice(slot * dh, (slot + 1) * dh)
                src = {j // dh for j in self.qk[i][block]}
                if len(src) != 1 or {j // dh for j in self.v[i][block]} != src:
                    raise UserError(f"permutation: layer {i} head slot {slot} does not take "
                                    f"its Q/K and V dims from one and the same head")


def _descending(scores: torch.Tensor) -> np.ndarray:
    """Indices by descending score; ties keep their order (stable)."""
    return np.argsort(-scores.detach().double().cpu().numpy(), kind="stable")


def compute_permutation(scores: Importance, scheme: "str | Scheme",
                        config: AutoTinyBertConfig) -> Permutation:
    """Sort every unit group by descending importance: whole heads in the MLM scheme, the
    Q/K dims and the V dims inside each head in the KD scheme."""
    scheme = Scheme.parse(scheme)
    H, Q = config.num_attention_heads, config.qkv_size
    dh = Q // H
    qk, v = [], []
    for i in range(config.num_hidden_layers):
        if scheme == Scheme.MLM:
            rows = tuple(int(h) * dh + d for h in _descending(scores.heads[i]) for d in range(dh))
            qk.append(rows)
            v.append(rows)
        else:
            for mine, group in ((qk, scores.qk[i]), (v, scores.v[i])):
                mine.append(tuple(h * dh + int(d) for h in range(H)
                                  for d in _descending(group[h])))
    perm = Permutation(tuple(int(j) for j in _descending(scores.hidden)),
                       tuple(tuple(int(j) for j in _descending(f)) for f in scores.ffn),
                       tuple(qk), tuple(v))
    perm.validate(config)
    return perm


@torch.no_grad()
def apply_permutation(model: AutoTinyBertPreTrainedModel, perm: Permutation) -> None:
    """Permute `model`'s units in place; at full width its function is unchanged (outputs
    over hidden features come out in the new order)."""
    perm.validate(model.config)
    device = next(model.parameters()).device

    def idx(p: Perm) -> torch.Tensor:
        return torch.tensor(p, dtype=torch.long, device=device)

    def rows(t: torch.Tensor, p: torch.Tensor) -> None:
        t.copy_(t.index_select(0, p))

    def cols(t: torch.Tensor, p: torch.Tensor) -> None:
        t.copy_(t.index_select(1, p))

    def out_rows(linear: nn.Linear, p: torch.Tensor) -> None:
        rows(linear.weight, p)
        if linear.bias is not None:
            rows(linear.bias, p)

    def norm(ln: nn.LayerNorm, p: torch.Tensor) -> None:
        rows(ln.weight, p)
        rows(ln.bias, p)

    hid = idx(perm.hidden)
    base = model.base_model
    emb = base.embeddings
    for e in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
        cols(e.weight, hid)  # the MLM decoder is tied to word_embeddings: permuted with it
    norm(emb.LayerNorm, hid)
    for i, layer in enumerate(base.encoder.layer):
        att, out = layer.attention.self, layer.attention.output
        qk, v, ffn = idx(perm.qk[i]), idx(perm.v[i]), idx(perm.ffn[i])
        for proj in (att.query, att.key, att.value):
            cols(proj.weight, hid)
        out_rows(att.query, qk)
        out_rows(att.key, qk)
        out_rows(att.value, v)
        cols(out.dense.weight, v)
        out_rows(out.dense, hid)
        norm(out.LayerNorm, hid)
        cols(layer.intermediate.dense.weight, hid)
        out_rows(layer.intermediate.dense, ffn)
        cols(layer.output.dense.weight, ffn)
        out_rows(layer.output.dense, hid)
        norm(layer.output.LayerNorm, hid)
    if base.pooler is not None:
        cols(base.pooler.dense.weight, hid)
        out_rows(base.pooler.dense, hid)
    if base.dense_fit is not None:
        cols(base.dense_fit.weight, hid)
    if isinstance(model, AutoTinyBertForMaskedLM):
        transform = model.cls.predictions.transform
        cols(transform.dense.weight, hid)
        out_rows(transform.dense, hid)
        norm(transform.LayerNorm, hid)
        model.tie_mlm_decoder()
    elif isinstance(model, AutoTinyBertForSequenceClassification):
        # It reads hidden features (the pooler's output, permuted above, or token means): each
        # of its hidden-wide column blocks (4 for "pair" pooling) is permuted alike.
        D = model.config.hidden_size
        cols(model.classifier.weight,
             torch.cat([hid + k * D for k in range(model.classifier.in_features // D)]))
    elif isinstance(model, AutoTinyBertForQuestionAnswering):
        cols(model.qa_outputs.weight, hid)


def reorder(model: AutoTinyBertPreTrainedModel, batches: Iterable[Mapping[str, Any]],
            scheme: "str | Scheme", measure: "str | Measure" = Measure.TAYLOR,
            seed: int = 0) -> Permutation:
    """Score `model`'s units on `batches`, sort them in place, return the permutation."""
    scheme = Scheme.resolve(model.config.attention_scheme, scheme, what="the model")
    check_sliceable(model.config, scheme, "the model")
    scores = importance_scores(model, batches, measure, seed)
    perm = compute_permutation(scores, scheme, model.config)
    apply_permutation(model, perm)
    return perm


# ---- a reordered checkpoint --------------------------------------------------------------------
def permutation_record(perm: Permutation, scheme: "str | Scheme", measure: "str | Measure",
                       source: str | os.PathLike) -> bytes:
    """The bytes of `permutation.json`, for `save_model(..., extra_files={PERMUTATION_FILE:
    ...})`: {"permutation": {hidden, ffn, qk, v}, "scheme", "measure", "source"}, where the
    permutation maps the source checkpoint's units to the saved model's (new j = old p[j])."""
    record = {"permutation": json.loads(perm.to_json()), "scheme": Scheme.parse(scheme).value,
              "measure": Measure.parse(measure).value, "source": str(source)}
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def read_permutation(model_dir: str | os.PathLike) -> Permutation | None:
    """The permutation recorded in a model directory (`permutation.json`), if any."""
    record = _read_record(model_dir)
    return None if record is None else Permutation.from_json(record["permutation"])


def _read_record(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    from .io import read_text

    path = Path(model_dir) / PERMUTATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(read_text(path, "permutation file"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(record, dict) or "permutation" not in record:
        raise UserError(f"{path} has no 'permutation' entry")
    return record


def _checkpoint_class(state_keys: Iterable[str]) -> type[AutoTinyBertPreTrainedModel]:
    """The model class that holds every part a checkpoint has (an encoder alone otherwise)."""
    keys = list(state_keys)
    if any(k.startswith("cls.") for k in keys):
        return AutoTinyBertForMaskedLM
    if any(k.startswith("classifier.") for k in keys):
        return AutoTinyBertForSequenceClassification
    if any(k.startswith("qa_outputs.") for k in keys):
        return AutoTinyBertForQuestionAnswering
    return AutoTinyBertModel


def reorder_checkpoint(src_dir: str | os.PathLike, batches: Iterable[Mapping[str, Any]],
                       out_dir: str | os.PathLike, scheme: "str | Scheme",
                       measure: "str | Measure" = Measure.TAYLOR,
                       seed: int = 0) -> tuple[Permutation, Path]:
    """Write a reordered full copy of the checkpoint in `src_dir` to `out_dir`.

    The copy holds the same parts as the source (MLM head, task head, dense_fit), permuted, and
    `permutation.json` (`permutation_record`): the permutation from the original checkpoint's
    units, composed with the source's own if the source was itself reordered. The weights are
    read twice (once to pick the model class that holds every part they have).
    Returns (this run's permutation, out_dir).
    """
    from .hf import (_do_lower_case, bundled_vocab_path, count_vocab, load_model,
                     normalize_keys, read_state_dict, resolve_model_dir, save_model)

    scheme, measure = Scheme.parse(scheme), Measure.parse(measure)
    src = resolve_model_dir(str(src_dir), need_weights=True)
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise UserError(f"the output directory is the source checkpoint {src}; choose another")
    record = _read_record(src)
    earlier = None if record is None else Permutation.from_json(record["permutation"])
    cls = _checkpoint_class(normalize_keys(read_state_dict(src)))
    model = load_model(src, cls, scheme.value)
    if earlier is not None:
        earlier.validate(model.config)
    perm = reorder(model, batches, scheme, measure, seed)
    recorded = perm if earlier is None else earlier.then(perm)
    vocab = src / "vocab.txt"
    if not vocab.is_file():
        vocab = bundled_vocab_path()
        if count_vocab(vocab) != model.config.vocab_size:
            raise UserError(f"{src} has no vocab.txt and its vocab_size "
                            f"{model.config.vocab_size} is not the bundled vocab's")
    source = src if record is None else record.get("source", src)
    save_model(model, out, vocab, do_lower_case=_do_lower_case(src),
               extra_files={PERMUTATION_FILE: permutation_record(recorded, scheme, measure,
                                                                 source)})
    logger.info("reordered %s (%s scheme, %s importance) into %s", src, scheme.value,
                measure.value, out)
    return perm, out
