"""Knowledge distillation for the SuperPLM: the teacher and the two KD losses.

As the original (task-agnostic, last layer only): the student's last hidden state, projected
to the teacher's width by `bert.dense_fit`, is matched to the teacher's last hidden state
(MSE), and the student's last-layer pre-softmax attention scores to the teacher's (MSE), with
unit weights. The teacher is any Hugging Face BERT or ELECTRA encoder, run in eval mode under
`no_grad` (the original computed and threw away teacher gradients).

Padding: with a correct attention mask (the default) the losses are means over real tokens
only, i.e. padded positions are excluded from the hidden-state MSE and padded queries *and*
keys from the attention MSE (the original divided by every position, padding included; its
`torch.where(att <= -100)` masking was a no-op because no mask was applied). Under
`--original_input_order` the models see no padding mask, padding is then ordinary input, and
every position counts, as in the original.

Relation KD (`--kd_objective relation`, MiniLMv2): instead of the hidden state and the score
maps, the student matches the teacher's last-layer self-attention *relations*: for each of
Q, K and V, the row-softmax of scaled dot products between the tokens' vectors, after both
models' vectors are re-split into the same number of relation heads. The student's width and
head count are free (a 4-head, 192-wide slice against a 12-head, 384-wide teacher), there is
no `dense_fit` to learn, and any permutation of the student's hidden units leaves the loss
unchanged (Q/K/V are computed from them; a reordered supernet is the same function).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging as hf_logging

from .cli import Choice
from .errors import UserError
from .hf import resolve_model_dir

logger = logging.getLogger(__name__)


def check_absolute_positions(config) -> None:
    """The KD losses compare the teacher's last layer token by token: relative position schemes
    are not supported."""
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise UserError(f"teacher uses position_embedding_type={kind!r}; only absolute "
                        f"positions (BERT, ELECTRA) are supported")


class KDObjective(Choice):
    """What a KD supernet matches of the teacher's last layer (see the module docstring)."""

    HIDDEN_ATTENTION = "hidden_attention"  # hidden state through dense_fit + score maps (MSE)
    RELATION = "relation"  # Q-Q, K-K, V-V self-attention relations (KL)

    @classmethod
    def label(cls) -> str:
        return "KD objective"


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # query, key, value: [B, T, width] each


@dataclass
class TeacherOutput:
    hidden: torch.Tensor  # [B, T, D_teacher], the last hidden state
    scores: torch.Tensor  # [B, H, T, T], last-layer Q.K^T / sqrt(d_head), no mask term
    qkv: QKV | None = None  # last-layer query, key, value outputs, when asked for


class Teacher:
    """A frozen HF BERT/ELECTRA encoder giving last hidden states and last-layer scores."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder.eval().requires_grad_(False)
        cfg = encoder.config
        self.hidden_size = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        layers = getattr(getattr(encoder, "encoder", None), "layer", None)
        if layers is None or len(layers) == 0:
            raise UserError(f"teacher of type {cfg.model_type!r} is not a BERT-like encoder "
                            f"(no encoder.layer); use a BERT or ELECTRA model")
        attn = layers[-1].attention.self
        if not all(hasattr(attn, k) for k in ("query", "key")):
            raise UserError(f"teacher of type {cfg.model_type!r} has no query/key projections "
                            f"in its last layer; use a BERT or ELECTRA model")
        check_absolute_positions(cfg)
        self.last_attention = attn
        self.head_dim = self.hidden_size // self.num_heads

    def to(self, device: torch.device) -> "Teacher":
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 token_type_ids: torch.Tensor | None, return_qkv: bool = False) -> TeacherOutput:
        kwargs = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(input_ids=input_ids, output_hidden_states=True, return_dict=True,
                           **kwargs)
        # The scores are not returned pre-softmax by HF; recompute them from the last layer's
        # own query/key applied to its input (hidden_states[-2]): exactly the layer's logits.
        x = out.hidden_states[-2]
        B, T, _ = x.shape
        shape = (B, T, self.num_heads, self.head_dim)
        q_flat, k_flat = self.last_attention.query(x), self.last_attention.key(x)
        q = q_flat.view(shape).transpose(1, 2)
        k = k_flat.view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        qkv = (q_flat, k_flat, self.last_attention.value(x)) if return_qkv else None
        return TeacherOutput(hidden=out.last_hidden_state, scores=scores, qkv=qkv)


@contextlib.contextmanager
def _quiet_loading():
    """No transformers "Loading weights" bar on stderr (a failed run prints one error line;
    the teacher's load is logged below)."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class TeacherSpec:
    """What a run checks about its teacher before loading its weights (`teacher_spec`)."""

    path: Path
    config: PretrainedConfig

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)


def teacher_spec(name_or_path: str) -> TeacherSpec:
    """Resolve and check a teacher from its directory and config alone (no weights read), so
    a run can check the student against it before anything is loaded or logged."""
    path = resolve_model_dir(name_or_path, need_weights=True)
    if not (path / "config.json").is_file():
        raise UserError(f"teacher directory {path} has no config.json")
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin",
                                               "model.safetensors.index.json",
                                               "pytorch_model.bin.index.json")):
        raise UserError(f"teacher directory {path} holds no weights "
                        f"(model.safetensors or pytorch_model.bin)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot read the teacher config in {path}: {err}") from None
    if config.model_type not in ("bert", "electra"):
        raise UserError(f"teacher {name_or_path} is a {config.model_type!r} model; expected a "
                        f"BERT or ELECTRA encoder")
    check_absolute_positions(config)
    return TeacherSpec(path, config)


def load_teacher(name_or_path: str | TeacherSpec, device: torch.device | str = "cpu") -> Teacher:
    """Load a HF BERT/ELECTRA encoder (directory or name, resolved as transformers does:
    cache, offline; or a checked `teacher_spec`) as a frozen teacher."""
    spec = name_or_path if isinstance(name_or_path, TeacherSpec) else teacher_spec(name_or_path)
    path, config = spec.path, spec.config
    try:
        # ELECTRA discriminator checkpoints (ElectraForPreTraining) load their `electra.` body.
        # Fast attention inside; the last layer's scores are recomputed from its query/key.
        with _quiet_loading():
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot load teacher weights from {path}: {err}") from None
    teacher = Teacher(model)
    logger.info("teacher %s: %s, %d layers, hidden %d, %d heads", path, config.model_type,
                config.num_hidden_layers, teacher.hidden_size, teacher.num_heads)
    return teacher.to(torch.device(device))


def kd_counts(attention_mask: torch.Tensor | None, batch: int, seq_len: int, fit_size: int,
              heads: int) -> tuple[int, int]:
    """Element counts the two MSE means divide by: (hidden elements, score elements).

    Padded tokens are excluded when there is a mask (see the module docstring).
    """
    if attention_mask is None:
        return batch * seq_len * fit_size, batch * heads * seq_len * seq_len
    per_seq = attention_mask.sum(dim=1).long()
    return int(per_seq.sum()) * fit_size, int((per_seq * per_seq).sum()) * heads


def kd_loss_sums(student_fit: torch.Tensor, student_scores: torch.Tensor,
                 teacher: TeacherOutput, attention_mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed squared errors (rep, att) in fp32; divide by the global `kd_counts`."""
    if student_scores.shape != teacher.scores.shape:
        raise UserError(f"student attention scores {tuple(student_scores.shape)} do not match "
                        f"the teacher's {tuple(teacher.scores.shape)}: the student must keep "
                        f"as many heads as the teacher")
    rep = (student_fit.float() - teacher.hidden.float()).pow(2)
    att = (student_scores.float() - teacher.scores.float()).pow(2)
    if attention_mask is None:
        return rep.sum(), att.sum()
    m = attention_mask.to(rep.dtype)
    rep_sum = (rep.sum(dim=-1) * m).sum()
    pairs = m[:, None, :, None] * m[:, None, None, :]
    att_sum = (att * pairs).sum()
    return rep_sum, att_sum


# ---- relation KD (MiniLMv2) --------------------------------------------------------------------
def relation_log_probs(x: torch.Tensor, heads: int,
                       attention_mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax_j(x_i . x_j / sqrt(w)) within each of `heads` relation heads, [B, R, T, T].

    `x` [B, T, W] is a layer's query, key or value output with its attention heads side by
    side; it is re-split into `heads` contiguous blocks of w = W / heads dims, whatever its own
    head count. Padded keys get probability 0 (rows of padded queries are left for the caller
    to ignore). Computed in fp32.
    """
    B, T, W = x.shape
    if W % heads:
        raise UserError(f"{heads} relation heads do not divide the Q/K/V width {W}")
    h = x.float().view(B, T, heads, W // heads).transpose(1, 2)
    logits = torch.matmul(h, h.transpose(-1, -2)) / math.sqrt(W // heads)
    if attention_mask is not None:
        keys = attention_mask[:, None, None, :].bool()
        logits = logits.masked_fill(~keys, torch.finfo(logits.dtype).min)
    return logits.log_softmax(dim=-1)


def relation_kd_count(attention_mask: torch.Tensor | None, batch: int, seq_len: int,
                      heads: int) -> int:
    """How many relation rows `relation_kd_sums` adds up: 3 relations x heads x real queries."""
    tokens = batch * seq_len if attention_mask is None else int(attention_mask.sum())
    return 3 * heads * tokens


def relation_kd_sums(student: QKV, teacher: QKV, attention_mask: torch.Tensor | None,
                     heads: int) -> torch.Tensor:
    """Summed KL(teacher || student) of the Q-Q, K-K and V-V relations over relation heads and
    real query tokens; divide by the global `relation_kd_count`.

    KL rather than MSE: a relation row is a distribution over keys (what attention itself
    uses), so KL compares what matters to attention and nothing else. It ignores a constant
    shift of a row's logits, which softmax ignores too, and it weighs keys by the teacher's
    probability, whereas an MSE over logits (or over probabilities) would be dominated by
    the scale of the dot products, which differs between a narrow student and a wide teacher,
    and by the near-zero tail. It is MiniLMv2's choice, which this follows.
    """
    if len(student) != 3 or len(teacher) != 3:
        raise ValueError("student and teacher must each give (query, key, value)")
    total = None
    for s, t in zip(student, teacher):
        if s.shape[:2] != t.shape[:2]:
            raise UserError(f"student Q/K/V {tuple(s.shape)} and teacher Q/K/V "
                            f"{tuple(t.shape)} cover different tokens")
        log_s = relation_log_probs(s, heads, attention_mask)
        log_t = relation_log_probs(t, heads, attention_mask)
        kl = log_t.exp() * (log_t - log_s)
        if attention_mask is not None:
            m = attention_mask.bool()
            # Padded keys: the teacher gives them probability 0; padded queries: not counted.
            kl = kl.masked_fill(~m[:, None, None, :], 0.0).sum(-1)
            kl = (kl * m[:, None, :].to(kl.dtype)).sum()
        else:
            kl = kl.sum()
        total = kl if total is None else total + kl
    return total


def relation_kd_loss(student: QKV, teacher: QKV, attention_mask: torch.Tensor | None,
                     heads: int) -> torch.Tensor:
    """Mean KL per relation row (`relation_kd_sums` / `relation_kd_count`) on one batch."""
    B, T = student[0].shape[:2]
    return relation_kd_sums(student, teacher, attention_mask, heads) / relation_kd_count(
        attention_mask, B, T, heads)
