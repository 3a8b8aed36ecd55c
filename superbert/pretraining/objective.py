"""The pre-training objective: MLM or knowledge distillation, each loss summed and divided by the
global element count of the optimizer step (`StepCounts`), so accumulation and world size do not
change it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Scheme
from ..distill import (KDObjective, TeacherOutput, kd_counts, kd_loss_sums,
                       relation_kd_count, relation_kd_sums)


# ---- the loss module ---------------------------------------------------------------------------
@dataclass
class StepCounts:
    """Global element counts of one optimizer step (all micro-batches, all ranks)."""

    masked: int = 0
    tokens: int = 0
    rep: int = 0
    att: int = 0
    relation: int = 0


class Objective:
    """The loss of one micro-batch for the active sub-arch, normalised by global counts."""

    def __init__(self, model: nn.Module, kind: Scheme, original_input_order: bool, teacher=None,
                 kd_objective: KDObjective = KDObjective.HIDDEN_ATTENTION,
                 relation_heads: int = 12):
        self.model = model
        self.kind = kind
        self.original_input_order = original_input_order
        self.teacher = teacher
        self.kd_objective = KDObjective.parse(kd_objective)
        self.relation_heads = relation_heads

    @property
    def relation(self) -> bool:
        """KD by Q/K/V relations (the teacher must then give its last-layer Q/K/V)."""
        return self.kind == Scheme.KD and self.kd_objective == KDObjective.RELATION

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(attention_mask, token_type_ids) the models see."""
        if self.original_input_order:
            # The original's swapped positional arguments: no padding mask, and the input
            # mask used as segment ids (1 on tokens, 0 on padding), for student and teacher.
            return None, batch["attention_mask"]
        return batch["attention_mask"], None

    def counts(self, batch: dict[str, torch.Tensor], fit_size: int, heads: int) -> list[int]:
        mask = batch["attention_mask"]
        masked = int((batch["labels"] != -100).sum()) if "labels" in batch else 0
        tokens = int(mask.sum())
        rep = att = relation = 0
        if self.kind == Scheme.KD:
            attend, _ = self.inputs(batch)
            B, T = batch["input_ids"].shape
            if self.relation:
                relation = relation_kd_count(attend, B, T, self.relation_heads)
            else:
                rep, att = kd_counts(attend, B, T, fit_size, heads)
        return [masked, tokens, rep, att, relation]

    def __call__(self, batch: dict[str, torch.Tensor], counts: StepCounts, teacher_out=None,
                 soft_targets: torch.Tensor | None = None, want_logits: bool = False,
                 n_local: int | None = None, inplace_target: Any = None,
                 want_target: bool = False
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(loss to backprop, detached loss terms, masked-row logits if asked (MLM) or this
        arch's detached KD outputs if `want_target` (KD: the largest arch's, for in-place
        distillation of the others through `inplace_target`))."""
        attend, segments = self.inputs(batch)
        bert = self.model.bert
        if self.relation:
            out = bert(batch["input_ids"], attend, segments, output_last_qkv=True)
            loss = relation_kd_sums(out.last_qkv, teacher_out.qkv, attend,
                                    self.relation_heads) / counts.relation
            parts = {"relation_loss": loss.detach()}
            if inplace_target is not None:
                # In-place distillation (--inplace_distill): also the largest arch's relations.
                extra = relation_kd_sums(out.last_qkv, inplace_target, attend,
                                         self.relation_heads) / counts.relation
                parts["inplace_loss"] = extra.detach()
                loss = loss + extra
            target = tuple(x.detach() for x in out.last_qkv) if want_target else None
            return loss, {"loss": loss.detach(), **parts}, target
        if self.kind == Scheme.KD:
            out = bert(batch["input_ids"], attend, segments, output_attention_scores=True)
            fit = bert.dense_fit(out.last_hidden_state)
            rep_sum, att_sum = kd_loss_sums(fit, out.last_attention_scores, teacher_out, attend)
            rep = rep_sum / counts.rep
            att = att_sum / counts.att
            loss = rep + att
            parts = {"rep_loss": rep.detach(), "att_loss": att.detach()}
            if inplace_target is not None:
                in_rep, in_att = kd_loss_sums(fit, out.last_attention_scores, inplace_target,
                                              attend)
                extra = in_rep / counts.rep + in_att / counts.att
                parts["inplace_loss"] = extra.detach()
                loss = loss + extra
            target = None
            if want_target:
                target = TeacherOutput(hidden=fit.detach(),
                                       scores=out.last_attention_scores.detach())
            return loss, {"loss": loss.detach(), **parts}, target
        out = bert(batch["input_ids"], attend, segments)
        labels = batch["labels"]
        if n_local is None:  # masked tokens in this micro-batch (counted on the host)
            n_local = int((labels != -100).sum())
        hidden = out.last_hidden_state
        if n_local == 0:
            # Nothing masked here (other ranks may have some): a zero that keeps the graph.
            loss = hidden.sum() * 0.0
            return loss, {"loss": loss.detach()}, None
        logits = None
        if soft_targets is not None or want_logits:
            where = labels.view(-1) != -100
            logits = self.model.cls(hidden.reshape(-1, hidden.shape[-1])[where]).float()
        if soft_targets is not None:
            # In-place distillation (--sandwich): match the largest sub-arch's predictions.
            loss_sum = -(soft_targets * logits.log_softmax(-1)).sum()
        elif logits is not None:
            loss_sum = F.cross_entropy(logits, labels.view(-1)[labels.view(-1) != -100],
                                       reduction="sum")
        else:
            # masked_lm_loss projects only the masked rows; mean x count = this batch's sum.
            loss_sum = self.model.masked_lm_loss(hidden, labels) * n_local
        loss = loss_sum / counts.masked
        return loss, {"loss": loss.detach()}, logits
