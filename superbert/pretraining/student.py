"""The student of a pre-training run: its vocab, where its weights come from (`Start`), its plan
checked from configs alone (`plan_student`), building it, and reordering its pretrained units
by importance (--reorder)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch

from ..arch import Arch, Scheme, SearchSpace, arch_of_config, validate_arch
from ..configuration import AutoTinyBertConfig
from ..data.shards import PretrainingDataset, sample_batches
from ..distill import KDObjective, TeacherSpec
from ..errors import UserError
from ..growth import (PERMUTATION_FILE, Permutation, check_sliceable, permutation_record,
                      read_permutation, reorder, supernet_from_pretrained)
from ..hf import has_weights, load_config, load_model, read_vocab
from ..modeling import AutoTinyBertForMaskedLM
from .config import PretrainConfig

logger = logging.getLogger(__name__)


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

@dataclass(frozen=True)
class Vocab:
    """The student's vocab.txt: its tokens and the ids of the special tokens it holds."""

    file: Path
    tokens: list[str]
    specials: dict[str, int]

    @classmethod
    def of_model(cls, model_dir: Path) -> "Vocab":
        file = model_dir / "vocab.txt"
        tokens = read_vocab(file)
        specials = {t: i for i, t in enumerate(tokens) if t in SPECIAL_TOKENS}
        for t in ("[PAD]", "[MASK]"):
            if t not in specials:
                raise UserError(f"{file} has no {t} token")
        return cls(file, tokens, specials)


class Start(StrEnum):
    """Where a run's weights come from (`start_of`)."""

    PRETRAINED = "pretrained"  # the weights in --student_model, the supernet has their dims
    SCRATCH = "scratch"  # fresh weights, asked for with --scratch
    CONFIG_ONLY = "config-only"  # fresh weights: the directory holds no weights
    FURTHER = "further"  # --further_train: an extracted model at its own arch


def start_of(cfg: PretrainConfig, model_dir: Path) -> Start:
    if cfg.further_train:
        return Start.FURTHER
    if cfg.scratch:
        return Start.SCRATCH
    return Start.PRETRAINED if has_weights(model_dir) else Start.CONFIG_ONLY


def start_line(start: Start, model_dir: Path) -> str:
    """The one log line that says which start a run took."""
    return {Start.PRETRAINED: f"start: pretrained weights of {model_dir}",
            Start.SCRATCH: "start: fresh weights (--scratch)",
            Start.CONFIG_ONLY: f"start: fresh weights (config-only directory {model_dir})",
            Start.FURTHER: f"start: weights of {model_dir} at its own arch (--further_train)",
            }[start]


@dataclass(frozen=True)
class StudentPlan:
    """The student as the flags describe it, checked from configs alone (`plan_student`)
    before any weight is read; `build_student` then makes it."""

    start: Start
    model_dir: Path
    config: AutoTinyBertConfig
    fixed: Arch | None
    space: SearchSpace | None
    teacher_width: int | None


def plan_student(cfg: PretrainConfig, model_dir: Path, teacher_width: int | None
                 ) -> StudentPlan:
    """The start (`start_of`), the config and the fixed arch or search space."""
    start = start_of(cfg, model_dir)
    if start == Start.FURTHER:
        config = load_config(model_dir, cfg.super_model)
        if teacher_width is not None and config.fit_size not in (None, teacher_width):
            raise UserError(f"{model_dir}: its dense_fit projects to {config.fit_size}, the "
                            f"teacher is {teacher_width} wide; use the teacher it was "
                            f"distilled from")
        return StudentPlan(start, model_dir, config, arch_of_config(config), None, teacher_width)
    scheme = cfg.super_model or cfg.objective
    if start == Start.PRETRAINED:
        # The checkpoint's dims; its scheme, if it records one, must be this run's (its
        # weights were trained to be sliced that way).
        config = load_config(model_dir, scheme)
        check_sliceable(config, scheme, str(model_dir))
    else:
        config = load_config(model_dir)
        saved = Scheme.parse(config.attention_scheme)
        if saved != scheme:
            # Not a contradiction: training from scratch re-slices the supernet under `scheme`.
            logger.warning("%s records the %s attention scheme; this run trains from scratch "
                           "with the %s scheme (recorded in its checkpoints)", model_dir,
                           saved.name, scheme.name)
        config.attention_scheme = scheme.value
        config.fit_size = teacher_width
    space = SearchSpace.for_supernet(
        config, scheme, layers=cfg.layer_num_space, hidden=cfg.hidden_size_space,
        qkv=cfg.qkv_size_space, ffn=cfg.intermediate_size_space, heads=cfg.head_num_space,
        hidden_step=cfg.hidden_step, ffn_step=cfg.ffn_step, qkv_step=cfg.qkv_step)
    if scheme == Scheme.KD and cfg.head_num_space is not None:
        raise UserError("--head_num_space applies to the MLM scheme; a KD supernet keeps all "
                        f"{config.num_attention_heads} heads and varies --qkv_size_space")
    if scheme == Scheme.MLM and cfg.qkv_size_space is not None:
        raise UserError("--qkv_size_space applies to the KD scheme; in the MLM scheme qkv is "
                        f"{config.qkv_size // config.num_attention_heads} x heads "
                        f"(--head_num_space)")
    space.validate_against(config)
    validate_arch(space.smallest(), config, scheme)
    return StudentPlan(start, model_dir, config, None, space, teacher_width)


def build_student(plan: StudentPlan, inherited: "Inherited | None" = None
                  ) -> tuple[AutoTinyBertForMaskedLM, str | None]:
    """The planned student, in train mode: the checkpoint's weights or fresh weights from the
    config; and the log line naming the parts a checkpoint lacked (initialised fresh), if any.
    A fresh dense_fit as wide as a reordered checkpoint (`inherited`) maps its features back
    to the original order."""
    fresh_line = None
    model_dir, width = plan.model_dir, plan.teacher_width
    if plan.start == Start.FURTHER:
        overrides = {}
        if width is not None and plan.config.fit_size is None:
            logger.warning("%s has no dense_fit: a fresh projection to the teacher width "
                           "%d is initialised", model_dir, width)
            overrides["fit_size"] = width
        model = load_model(model_dir, AutoTinyBertForMaskedLM, plan.config.attention_scheme,
                           **overrides)
    elif plan.start == Start.PRETRAINED:
        model, fresh = supernet_from_pretrained(model_dir, plan.config.attention_scheme,
                                                fit_size=width)
        if fresh:
            identity = ("bert.dense_fit.weight" in fresh
                        and model.config.fit_size == model.config.hidden_size)
            how = " (dense_fit as the identity)" if identity else ""
            if identity and inherited is not None:
                # supernet_from_pretrained made it the identity; the checkpoint's feature j
                # is the original's perm[j], and a teacher as wide is the original's order.
                with torch.no_grad():
                    eye = torch.eye(model.config.hidden_size)
                    model.bert.dense_fit.weight.copy_(eye[:, list(inherited.perm.hidden)])
                how = " (dense_fit maps the reordered features back to the original order)"
            fresh_line = (f"not in {model_dir}, initialised fresh: {', '.join(fresh)}{how}; "
                          f"the MLM decoder is tied to the word embeddings")
    else:
        model = AutoTinyBertForMaskedLM(plan.config)
    model.train()
    return model, fresh_line


def check_student(cfg: PretrainConfig, plan: StudentPlan, vocab: Vocab,
                  teacher: TeacherSpec | None) -> None:
    """The planned student fits the sequence length, the vocab and the teacher's heads."""
    config, fixed, space = plan.config, plan.fixed, plan.space
    if cfg.max_seq_length > config.max_position_embeddings:
        raise UserError(f"--max_seq_length {cfg.max_seq_length} exceeds the model's "
                        f"{config.max_position_embeddings} position embeddings")
    if config.vocab_size < len(vocab.tokens):
        raise UserError(f"{vocab.file} has {len(vocab.tokens)} tokens, more than the model's "
                        f"vocab_size {config.vocab_size}")
    if teacher is not None and cfg.kd_objective == KDObjective.RELATION:
        # Relations re-split Q/K/V into --relation_heads: any head count, but every width
        # must split evenly.
        R = cfg.relation_heads
        widths = [fixed.qkv] if fixed else list(space.qkv_values())
        bad = [w for w in [teacher.hidden_size, *widths] if w % R]
        if bad:
            raise UserError(f"--relation_heads {R} does not divide the Q/K/V width "
                            f"{bad[0]} (teacher {teacher.hidden_size}, student qkv sizes "
                            f"{widths[0]}..{widths[-1]})")
    elif teacher is not None:
        heads = fixed.heads if fixed else (space.kd_heads if space.scheme == Scheme.KD else None)
        if heads != teacher.num_heads:
            raise UserError(f"the student keeps {heads} attention heads but the teacher has "
                            f"{teacher.num_heads}; the attention loss matches them one to one")


# Sequences per forward when scoring importance: fixed, so the permutation (float sums over
# batches) does not depend on the batch size or the number of ranks.
IMPORTANCE_BATCH = 16


def importance_batches(cfg: PretrainConfig, dataset: PretrainingDataset,
                       vocab: Vocab) -> list[dict[str, torch.Tensor]]:
    """--reorder_samples sequences of the data, drawn with --seed, unmasked."""
    return sample_batches(dataset, cfg.reorder_samples, IMPORTANCE_BATCH, cfg.seed,
                          vocab.specials["[PAD]"])


@dataclass(frozen=True)
class Inherited:
    """The permutation a pretrained start already carries (a reordered checkpoint's
    permutation.json): kept in this run's checkpoints, composed with a new --reorder."""

    perm: Permutation
    source: str
    record: bytes


def inherited_permutation(model_dir: Path, config: AutoTinyBertConfig) -> Inherited | None:
    perm = read_permutation(model_dir)
    if perm is None:
        return None
    perm.validate(config)
    record = (model_dir / PERMUTATION_FILE).read_bytes()
    return Inherited(perm, str(json.loads(record).get("source", model_dir)), record)


def reorder_student(cfg: PretrainConfig, model: AutoTinyBertForMaskedLM, student_dir: Path,
                    dataset: PretrainingDataset, vocab: Vocab,
                    inherited: Inherited | None) -> bytes:
    """--reorder: sort the pretrained units in place; the permutation record to save (from
    the original checkpoint's units when the start was itself reordered)."""
    scheme = Scheme.parse(model.config.attention_scheme)
    batches = importance_batches(cfg, dataset, vocab)
    t0 = time.perf_counter()
    perm = reorder(model, batches, scheme, cfg.reorder_importance, cfg.seed)
    logger.info("reordered the units of %s by %s importance on %d sequences (%s scheme, "
                "%.1f s)", student_dir, cfg.reorder_importance.value,
                sum(len(b["input_ids"]) for b in batches), scheme.name, time.perf_counter() - t0)
    model.train()
    if inherited is not None:
        return permutation_record(inherited.perm.then(perm), scheme, cfg.reorder_importance,
                                  inherited.source)
    return permutation_record(perm, scheme, cfg.reorder_importance, student_dir)
