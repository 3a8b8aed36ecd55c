"""SuperBERT: a BERT whose every weight-bearing layer can run as a slice of itself.

Module and parameter names mirror Hugging Face's `modeling_bert.py` (`bert.embeddings...`,
`bert.encoder.layer.{i}.attention.self.query`, `cls.predictions...`), so a checkpoint maps to
and from transformers' BERT by name. A model built from a sub-arch config is an ordinary dense
BERT (with `qkv_size` possibly != `hidden_size`); the same class built from the supernet config
is the SuperBERT, and `set_sample_config(arch)` selects the active slice once per step:

- embeddings, LayerNorms, pooler, heads: the leading `d` features;
- encoder: the bottom `L` layers;
- attention, "mlm" scheme: the first `h` heads (head width fixed);
  "kd" scheme: all heads, each keeping the leading `q/H` dims of its own slot;
- FFN: the leading `f` units.

`extract_submodel` copies exactly those slices into a dense model of the sub-arch's size, so
its outputs equal the supernet slice by construction.

Imports only torch and transformers: this file travels with exported models.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import AutoTinyBertConfig
from .layers import SUPER_LAYERS, SuperEmbedding, SuperLayerNorm, SuperLinear

try:  # transformers >= 5: init helpers that leave loaded weights alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init

ACT = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu,
       "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


@dataclass
class SampleConfig:
    """The active sub-arch: layers, hidden, heads, qkv, ffn (homogeneous layers)."""

    layers: int
    hidden: int
    heads: int
    qkv: int
    ffn: int


def as_sample(arch: Any) -> SampleConfig:
    """Accept an `Arch`, a `SampleConfig` or the original's arch dict."""
    if isinstance(arch, Mapping):
        first = lambda v: v[0] if isinstance(v, (list, tuple)) else v  # noqa: E731
        return SampleConfig(int(arch["sample_layer_num"]), int(arch["sample_hidden_size"]),
                            int(first(arch["sample_num_attention_heads"])),
                            int(first(arch["sample_qkv_sizes"])),
                            int(first(arch["sample_intermediate_sizes"])))
    return SampleConfig(int(arch.layers), int(arch.hidden), int(arch.heads), int(arch.qkv),
                        int(arch.ffn))


def full_sample(config: AutoTinyBertConfig) -> SampleConfig:
    return SampleConfig(config.num_hidden_layers, config.hidden_size,
                        config.num_attention_heads, config.qkv_size, config.intermediate_size)


@dataclass
class SuperBertModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    # Pre-softmax attention scores Q.K^T/sqrt(d_head) of the last layer, without the mask term
    # (what the KD loss matches); only when asked for.
    last_attention_scores: torch.Tensor | None = None
    # The last layer's query, key and value outputs [B, T, qkv] (head slots side by side, as
    # the projections give them; what the relation KD loss compares); only when asked for.
    last_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


# ---- blocks ------------------------------------------------------------------------------------
class SuperBertEmbeddings(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        D = config.hidden_size
        self.word_embeddings = SuperEmbedding(config.vocab_size, D, padding_idx=config.pad_token_id)
        self.position_embeddings = SuperEmbedding(config.max_position_embeddings, D)
        self.token_type_embeddings = SuperEmbedding(config.type_vocab_size, D)
        self.LayerNorm = SuperLayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def set_sample(self, s: SampleConfig) -> None:
        for m in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings,
                  self.LayerNorm):
            m.set_sample(s.hidden)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if token_type_ids is None:
            # Segment 0 for every token: add row 0 without building an index tensor.
            x = x + self.token_type_embeddings.active_weight()[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SuperBertSelfAttention(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        D, Q, H = config.hidden_size, config.qkv_size, config.num_attention_heads
        if Q % H:
            raise ValueError(f"qkv_size {Q} is not divisible by num_attention_heads {H}")
        self.max_heads = H
        self.scheme = config.attention_scheme
        self.query = SuperLinear(D, Q)
        self.key = SuperLinear(D, Q)
        self.value = SuperLinear(D, Q)
        self.dropout_p = config.attention_probs_dropout_prob
        self.set_sample(full_sample(config))

    def per_head_slots(self, s: SampleConfig) -> int:
        """KD scheme below full width: slice inside each of the H head slots (groups = H)."""
        if self.scheme == "kd" and s.qkv != self.query.out_features:
            if s.heads != self.max_heads:
                raise ValueError(f"the kd scheme keeps all {self.max_heads} heads, "
                                 f"got {s.heads}")
            return self.max_heads
        return 0

    def set_sample(self, s: SampleConfig) -> None:
        if s.qkv % s.heads:
            raise ValueError(f"qkv {s.qkv} is not divisible by {s.heads} heads")
        groups = self.per_head_slots(s)
        for m in (self.query, self.key, self.value):
            m.set_sample(s.hidden, s.qkv, out_groups=groups)
        self.heads, self.head_dim = s.heads, s.qkv // s.heads

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None,
                return_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        shape = (B, T, self.heads, self.head_dim)
        q = self.query(x).view(shape).transpose(1, 2)
        k = self.key(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        p = self.dropout_p if self.training else 0.0
        scores = None
        if return_scores:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            masked = scores if attend is None else scores.masked_fill(~attend, torch.finfo(scores.dtype).min)
            probs = F.dropout(masked.softmax(dim=-1), p=p, training=self.training)
            ctx = torch.matmul(probs, v)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
        return ctx.transpose(1, 2).reshape(B, T, self.heads * self.head_dim), scores


class SuperBertSelfOutput(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.dense = SuperLinear(config.qkv_size, config.hidden_size)
        self.LayerNorm = SuperLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def set_sample(self, s: SampleConfig, head_groups: int) -> None:
        self.dense.set_sample(s.qkv, s.hidden, in_groups=head_groups)
        self.LayerNorm.set_sample(s.hidden)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class SuperBertAttention(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.self = SuperBertSelfAttention(config)
        self.output = SuperBertSelfOutput(config)

    def set_sample(self, s: SampleConfig) -> None:
        self.self.set_sample(s)
        self.output.set_sample(s, self.self.per_head_slots(s))

    def forward(self, x, attend, return_scores=False):
        ctx, scores = self.self(x, attend, return_scores)
        return self.output(ctx, x), scores


class SuperBertIntermediate(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.dense = SuperLinear(config.hidden_size, config.intermediate_size)
        self.act = ACT[config.hidden_act]

    def set_sample(self, s: SampleConfig) -> None:
        self.dense.set_sample(s.hidden, s.ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class SuperBertOutput(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.dense = SuperLinear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = SuperLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def set_sample(self, s: SampleConfig) -> None:
        self.dense.set_sample(s.ffn, s.hidden)
        self.LayerNorm.set_sample(s.hidden)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class SuperBertLayer(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.attention = SuperBertAttention(config)
        self.intermediate = SuperBertIntermediate(config)
        self.output = SuperBertOutput(config)

    def set_sample(self, s: SampleConfig) -> None:
        self.attention.set_sample(s)
        self.intermediate.set_sample(s)
        self.output.set_sample(s)

    def forward(self, x, attend, return_scores=False):
        a, scores = self.attention(x, attend, return_scores)
        return self.output(self.intermediate(a), a), scores


class SuperBertEncoder(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(SuperBertLayer(config) for _ in range(config.num_hidden_layers))
        self.sample_layers = config.num_hidden_layers

    def set_sample(self, s: SampleConfig) -> None:
        self.sample_layers = s.layers
        for layer in self.layer[: s.layers]:
            layer.set_sample(s)

    def active_layers(self) -> nn.ModuleList:
        return self.layer[: self.sample_layers]


class SuperBertPooler(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.dense = SuperLinear(config.hidden_size, config.hidden_size)

    def set_sample(self, s: SampleConfig) -> None:
        self.dense.set_sample(s.hidden, s.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


# ---- models ------------------------------------------------------------------------------------
class AutoTinyBertPreTrainedModel(PreTrainedModel):
    config_class = AutoTinyBertConfig
    base_model_prefix = "bert"
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SuperBertLMPredictionHead):
            init.zeros_(module.bias)

    # The active sub-arch is set here, once per step, for the whole tree.
    def set_sample_config(self, arch: Any) -> SampleConfig:
        s = as_sample(arch)
        self.base_model.set_sample(s)
        if self.base_model is not self:
            self.set_head_sample(s)
        self.sample_config = s
        return s

    def set_head_sample(self, s: SampleConfig) -> None:
        """Slice the task head (if any) to the active hidden size."""

    def active_sample(self) -> SampleConfig:
        return getattr(self, "sample_config", None) or full_sample(self.config)


class AutoTinyBertModel(AutoTinyBertPreTrainedModel):
    """Embeddings, encoder, pooler, and `dense_fit` (the KD projection) when `fit_size` is set."""

    def __init__(self, config: AutoTinyBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = SuperBertEmbeddings(config)
        self.encoder = SuperBertEncoder(config)
        self.pooler = SuperBertPooler(config) if add_pooling_layer else None
        self.dense_fit = (SuperLinear(config.hidden_size, config.fit_size)
                          if config.fit_size else None)
        self.post_init()
        self.set_sample(full_sample(config))

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    def set_sample(self, s: SampleConfig) -> None:
        self.embeddings.set_sample(s)
        self.encoder.set_sample(s)
        if self.pooler is not None:
            self.pooler.set_sample(s)
        if self.dense_fit is not None:
            self.dense_fit.set_sample(s.hidden, self.dense_fit.out_features)
        self.sample_config = s

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                output_last_qkv: bool = False, return_dict: bool | None = None,
                **kwargs: Any) -> SuperBertModelOutput:
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        # Boolean "may attend" mask over keys, [B, 1, 1, T]; None means attend everywhere.
        attend = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        hidden = (x,) if output_hidden_states else None
        layers = self.encoder.active_layers()
        scores = qkv = None
        for i, layer in enumerate(layers):
            want_scores = output_attention_scores and i == len(layers) - 1
            if output_last_qkv and i == len(layers) - 1:
                # Recomputed from the layer's input with its own (sliced) projections, as the
                # teacher's are (distill.Teacher): the same values and gradients as inside the
                # layer, without widening every attention block's return value.
                att = layer.attention.self
                qkv = (att.query(x), att.key(x), att.value(x))
            x, layer_scores = layer(x, attend, want_scores)
            if want_scores:
                scores = layer_scores
            if output_hidden_states:
                hidden = hidden + (x,)
        pooled = self.pooler(x) if self.pooler is not None else None
        out = SuperBertModelOutput(last_hidden_state=x, pooler_output=pooled,
                                   hidden_states=hidden, last_attention_scores=scores,
                                   last_qkv=qkv)
        return out if return_dict is not False else out.to_tuple()


class SuperBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.dense = SuperLinear(config.hidden_size, config.hidden_size)
        self.act = ACT[config.hidden_act]
        self.LayerNorm = SuperLayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def set_sample(self, s: SampleConfig) -> None:
        self.dense.set_sample(s.hidden, s.hidden)
        self.LayerNorm.set_sample(s.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class SuperBertLMPredictionHead(nn.Module):
    """Transform, then the decoder tied to the (sliced) word embeddings, plus a vocab bias."""

    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.transform = SuperBertPredictionHeadTransform(config)
        self.decoder = SuperLinear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def set_sample(self, s: SampleConfig) -> None:
        self.transform.set_sample(s)
        self.decoder.set_sample(s.hidden, self.decoder.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class SuperBertOnlyMLMHead(nn.Module):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__()
        self.predictions = SuperBertLMPredictionHead(config)

    def set_sample(self, s: SampleConfig) -> None:
        self.predictions.set_sample(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class AutoTinyBertForMaskedLM(AutoTinyBertPreTrainedModel):
    """The pre-training model: encoder + MLM head (+ `bert.dense_fit` for KD)."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: AutoTinyBertConfig):
        super().__init__(config)
        self.bert = AutoTinyBertModel(config, add_pooling_layer=True)
        self.cls = SuperBertOnlyMLMHead(config)
        self.post_init()
        self.tie_mlm_decoder()

    def set_head_sample(self, s: SampleConfig) -> None:
        self.cls.set_sample(s)

    def tie_mlm_decoder(self) -> None:
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new: nn.Module) -> None:
        self.cls.predictions.decoder = new

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, return_dict: bool | None = None,
                **kwargs: Any) -> MaskedLMOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                        output_hidden_states=output_hidden_states)
        logits = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                   ignore_index=-100)
        result = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()

    def masked_lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the masked positions only (labels != -100).

        The vocabulary projection runs on the masked rows alone, a fraction of the cost of
        projecting every position.
        """
        where = labels.view(-1) != -100
        rows = hidden.reshape(-1, hidden.shape[-1])[where]
        logits = self.cls(rows)
        return F.cross_entropy(logits.float(), labels.view(-1)[where])


# What a sequence classifier can read, and how many hidden-wide blocks each hands it (its input
# is blocks x hidden).
POOLED_BLOCKS = {"cls": 1, "mean": 1, "pair": 4}
CLASSIFIER_POOLINGS = tuple(POOLED_BLOCKS)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of the token vectors the mask keeps (all of them without a mask)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def pair_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None,
              token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """[a, b, |a - b|, a * b] (4 x hidden wide): a is the mean of segment A's token vectors
    (token type 0: [CLS], the first sentence and its [SEP]), b the mean of segment B's (token
    type 1), each over the tokens the mask keeps.

    Why: narrow-hidden slices of a weight-sharing supernet lose a sentence pair under the plain
    token mean, while both sentences survive in their own means (docs/measured/
    hidden_cuts_2026-12-07.md). With no second segment (a single sentence, or no
    token_type_ids) b is zeros, so the features are [a, 0, |a|, 0] and the head still works.
    """
    keep = (torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
            if attention_mask is None else attention_mask.to(hidden.dtype))
    if token_type_ids is None:
        a, b = mean_pool(hidden, keep), torch.zeros_like(hidden[:, 0])
    else:
        a = mean_pool(hidden, keep * (token_type_ids == 0).to(hidden.dtype))
        b = mean_pool(hidden, keep * (token_type_ids == 1).to(hidden.dtype))
    return torch.cat([a, b, (a - b).abs(), a * b], dim=-1)


class AutoTinyBertForSequenceClassification(AutoTinyBertPreTrainedModel):
    """Encoder + a linear classifier over `config.classifier_pooling`'s features: BERT's [CLS]
    pooler ("cls"), the token mean ("mean"), or the segment features of `pair_pool` ("pair").

    A "pair" classifier reads 4 blocks of hidden features; a slice of hidden d keeps the first d
    columns of each block (not the first 4d), so it reads the sub-model's own 4 x d features.
    """

    def __init__(self, config: AutoTinyBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = AutoTinyBertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        if config.classifier_pooling not in POOLED_BLOCKS:
            raise ValueError(f"classifier_pooling {config.classifier_pooling!r} is not one of "
                             f"{', '.join(CLASSIFIER_POOLINGS)}")
        self.pooled_blocks = POOLED_BLOCKS[config.classifier_pooling]
        self.classifier = SuperLinear(self.pooled_blocks * config.hidden_size, config.num_labels)
        self.post_init()

    def set_head_sample(self, s: SampleConfig) -> None:
        blocks = self.pooled_blocks
        self.classifier.set_sample(blocks * s.hidden, self.classifier.out_features,
                                   in_groups=blocks if blocks > 1 else 0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: Any):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        pooling = self.config.classifier_pooling
        if pooling == "mean":
            pooled = mean_pool(out.last_hidden_state, attention_mask)
        elif pooling == "pair":
            pooled = pair_pool(out.last_hidden_state, attention_mask, token_type_ids)
        else:
            pooled = out.pooler_output
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
            else:
                loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        result = SequenceClassifierOutput(loss=loss, logits=logits)
        return result if return_dict is not False else result.to_tuple()


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class QuestionAnsweringOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None


class AutoTinyBertForQuestionAnswering(AutoTinyBertPreTrainedModel):
    def __init__(self, config: AutoTinyBertConfig):
        super().__init__(config)
        self.bert = AutoTinyBertModel(config, add_pooling_layer=False)
        self.qa_outputs = SuperLinear(config.hidden_size, 2)
        self.post_init()

    def set_head_sample(self, s: SampleConfig) -> None:
        self.qa_outputs.set_sample(s.hidden, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        start, end = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start.shape[1]
            # Positions outside the window (answer not in it) are clamped and ignored.
            sp = start_positions.clamp(0, T)
            ep = end_positions.clamp(0, T)
            loss = (F.cross_entropy(start.float(), sp, ignore_index=T)
                    + F.cross_entropy(end.float(), ep, ignore_index=T)) / 2
        result = QuestionAnsweringOutput(loss=loss, start_logits=start, end_logits=end)
        return result if return_dict is not False else result.to_tuple()


# ---- extraction --------------------------------------------------------------------------------
def sub_config(config: AutoTinyBertConfig, arch: Any) -> AutoTinyBertConfig:
    """The config of the dense model holding exactly the sub-arch `arch`."""
    s = as_sample(arch)
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = s.layers
    cfg.hidden_size = s.hidden
    cfg.num_attention_heads = s.heads
    cfg.qkv_size = s.qkv
    cfg.intermediate_size = s.ffn
    return cfg


def active_state_dict(model: AutoTinyBertPreTrainedModel) -> dict[str, torch.Tensor]:
    """The active slice of every parameter, under the parameter's own name (copies)."""
    layers = model.base_model.encoder.sample_layers
    prefix = "encoder.layer."
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, SUPER_LAYERS):
            continue
        at = name.find(prefix)
        if at >= 0 and int(name[at + len(prefix):].split(".")[0]) >= layers:
            continue
        for key, tensor in module.active_params().items():
            out[f"{name}.{key}"] = tensor.detach().clone()
    in_super_layers = {f"{name}.{key}" for name, module in model.named_modules()
                       if isinstance(module, SUPER_LAYERS)
                       for key, _ in module.named_parameters(recurse=False)}
    for name, param in model.named_parameters():  # e.g. the MLM output bias
        if name not in in_super_layers:
            out[name] = param.detach().clone()
    return out


@torch.no_grad()
def extract_submodel(model: AutoTinyBertPreTrainedModel, arch: Any) -> AutoTinyBertPreTrainedModel:
    """A dense model of the sub-arch whose outputs equal `model` sliced to `arch`."""
    was = model.active_sample()
    model.set_sample_config(arch)
    try:
        state = active_state_dict(model)
        cfg = sub_config(model.config, arch)
        sub = type(model)(cfg).to(next(model.parameters()).dtype)
        missing, unexpected = sub.load_state_dict(state, strict=False)
        # A tied decoder may be listed as missing: it is the word embedding itself.
        missing = [k for k in missing if not k.startswith("cls.predictions.decoder.")]
        if missing or unexpected:
            raise RuntimeError(f"extraction mismatch: missing {missing}, unexpected {unexpected}")
    finally:
        model.set_sample_config(was)
    if isinstance(sub, AutoTinyBertForMaskedLM):
        sub.tie_mlm_decoder()
    return sub.train(model.training)
