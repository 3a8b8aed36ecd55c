"""What cutting the hidden width does to a grown supernet's slices, and a calibration for it.

`stream_outliers` finds the residual stream's outlier channels (BERT-family encoders have a
handful, tens of times the median channel) and their share of each LayerNorm's variance;
`outlier_aware_scores` ranks them last for a reordering; `layernorm_gains` measures how much
larger a slice's per-token deviation is than the full width's, and `apply_layernorm_gains`
folds that into the LayerNorm weights. bench/diagnose_hidden_cuts.py measures them on MiniLM
(docs/measured/hidden_cuts_2026-12-07.md); the supernet itself uses none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .errors import UserError
from .growth import Importance, batch_inputs
from .modeling import AutoTinyBertModel, AutoTinyBertPreTrainedModel, full_sample


def named_layernorms(base: AutoTinyBertModel) -> list[tuple[str, nn.Module]]:
    """The LayerNorms of the residual stream in forward order: "emb", "L0.att", "L0.out", ..."""
    lns = [("emb", base.embeddings.LayerNorm)]
    for i, layer in enumerate(base.encoder.layer):
        lns += [(f"L{i}.att", layer.attention.output.LayerNorm),
                (f"L{i}.out", layer.output.LayerNorm)]
    return lns


# ---- outlier channels of the residual stream ---------------------------------------------------
@dataclass(frozen=True)
class StreamOutliers:
    """The outlier channels of a model's residual stream, as its LayerNorms see it.

    places: the LayerNorms in forward order ("emb", "L0.att", "L0.out", ...); ratio [P, D]: the
    RMS of each channel of the centred pre-LayerNorm input over real tokens, as a multiple of
    the median channel's; share [P]: the outliers' mean share of the per-token variance;
    channels: the outliers (ratio >= threshold at some place), ascending.
    """

    places: tuple[str, ...]
    ratio: torch.Tensor
    share: torch.Tensor
    channels: tuple[int, ...]
    threshold: float


@torch.no_grad()
def stream_outliers(model: AutoTinyBertPreTrainedModel, batches: Iterable[Mapping[str, Any]],
                    threshold: float = 6.0) -> StreamOutliers:
    """Find the few channels of the residual stream whose magnitude dwarfs the others' at the
    model's LayerNorms (BERT-family encoders have a handful, tens of times the median).

    LayerNorm divides every channel by the per-token standard deviation over the active width;
    where a few channels carry much of that variance, a slice that keeps them while dropping
    ordinary channels renormalises the survivors by a deviation the outliers dominate.
    Measured at full width in eval mode (sample and mode restored); `batches` is read twice.
    """
    batches = list(batches)
    base = model.base_model
    was_training, was_sample = model.training, model.active_sample()
    model.set_sample_config(full_sample(model.config))
    model.eval()
    lns = named_layernorms(base)
    device = next(model.parameters()).device
    acts: dict[int, torch.Tensor] = {}
    handles = [ln.register_forward_hook(lambda _m, inp, _o, k=k: acts.__setitem__(k, inp[0]))
               for k, (_, ln) in enumerate(lns)]

    def centred_squares():  # per batch: [places, real tokens, D]
        for batch in batches:
            ids, mask, segments = batch_inputs(batch, device)
            base(ids, mask, segments)
            x = torch.stack([acts[k][mask.bool()].double() for k in range(len(lns))])
            yield (x - x.mean(-1, keepdim=True)).pow(2).cpu()

    try:
        sq, tokens = 0.0, 0
        for c2 in centred_squares():
            sq, tokens = sq + c2.sum(1), tokens + c2.shape[1]
        if tokens == 0:
            raise UserError("no tokens to find outlier channels on: the sample batches are empty")
        rms = (sq / tokens).sqrt()
        ratio = rms / rms.median(dim=1, keepdim=True).values
        channels = [int(c) for c in torch.nonzero((ratio >= threshold).any(0)).flatten()]
        share = 0.0
        for c2 in centred_squares():
            share = share + (c2[..., channels].sum(-1) / c2.sum(-1)).sum(1)
    finally:
        for h in handles:
            h.remove()
        model.set_sample_config(was_sample)
        model.train(was_training)
    return StreamOutliers(tuple(n for n, _ in lns), ratio, share / tokens, tuple(channels),
                          threshold)


def outlier_aware_scores(scores: Importance, outliers: StreamOutliers) -> Importance:
    """`scores` with the outlier channels ranked last (among themselves as scored), every
    other unit as scored: slices that cut the hidden width drop the outliers first."""
    hidden = scores.hidden.clone()
    idx = list(outliers.channels)
    if idx:
        # Below every other score, keeping the outliers' own order.
        span = float(hidden.max() - hidden.min()) + 1.0
        hidden[idx] = hidden[idx] - 2 * span
    return Importance(hidden, scores.ffn, scores.heads, scores.qk, scores.v)


# ---- per-width LayerNorm calibration -------------------------------------------------------------


@torch.no_grad()
def layernorm_gains(model: AutoTinyBertPreTrainedModel, batches: Iterable[Mapping[str, Any]],
                    hidden: int) -> torch.Tensor:
    """Per LayerNorm (embeddings, then each layer's attention and output LayerNorm): the mean
    over real tokens of sigma_d / sigma_D, the per-token deviation over the leading `hidden`
    channels of its input against over all of them, on the full-width forward.

    A slice `hidden` wide normalises by sigma_d. When its leading channels carry more than
    their share of the variance (what importance ordering does: the kept share is 73% at half
    width on MiniLM ordered by magnitude), sigma_d > sigma_D and every kept channel comes out
    smaller than at full width; so do the Q.K logits the next layer computes from them, and
    its attention flattens. Multiplying a LayerNorm's weight (not its bias) by its gain gives
    the kept channels their full-width scale back (`apply_layernorm_gains`).
    """
    base = model.base_model
    D = model.config.hidden_size
    if not 0 < hidden <= D:
        raise UserError(f"hidden width {hidden} is outside 1..{D}")
    was_training, was_sample = model.training, model.active_sample()
    model.set_sample_config(full_sample(model.config))
    model.eval()
    lns = [ln for _, ln in named_layernorms(base)]
    acts: dict[int, torch.Tensor] = {}
    handles = [ln.register_forward_hook(lambda _m, inp, _o, k=k: acts.__setitem__(k, inp[0]))
               for k, ln in enumerate(lns)]
    device = next(model.parameters()).device
    sums, tokens = torch.zeros(len(lns), dtype=torch.float64), 0
    try:
        for batch in batches:
            ids, mask, segments = batch_inputs(batch, device)
            base(ids, mask, segments)
            real = mask.bool()
            for k in range(len(lns)):
                x = acts[k][real].double()
                sd = x[:, :hidden].var(-1, unbiased=False).add(lns[k].eps).sqrt()
                sD = x.var(-1, unbiased=False).add(lns[k].eps).sqrt()
                sums[k] += (sd / sD).sum().cpu()
            tokens += int(real.sum())
    finally:
        for h in handles:
            h.remove()
        model.set_sample_config(was_sample)
        model.train(was_training)
    if tokens == 0:
        raise UserError("no tokens to calibrate on: the sample batches are empty")
    return sums / tokens


@torch.no_grad()
def apply_layernorm_gains(model: AutoTinyBertPreTrainedModel, gains: torch.Tensor) -> None:
    """Multiply each LayerNorm's weight by its gain (`layernorm_gains` order), in place: for a
    model extracted at (or a copy used only at) the width the gains were measured for."""
    lns = [ln for _, ln in named_layernorms(model.base_model)]
    if len(gains) != len(lns):
        raise UserError(f"{len(gains)} gains for {len(lns)} LayerNorms")
    for ln, g in zip(lns, gains):
        ln.weight.mul_(float(g))
