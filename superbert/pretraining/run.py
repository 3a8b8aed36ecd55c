"""A pre-training run assembled from its config (what pre_training.py calls): the teacher, the
student, the data, the resume point and the output directories, then the trainer; or, with
--reorder_only, the reordered copy."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..arch import Scheme
from ..checkpoint import (find_checkpoints, latest_valid_checkpoint, remove_staging, set_seed,
                          verify_checkpoint)
from ..data.masking import MaskingCollator
from ..data.shards import PretrainingDataset
from ..distill import TeacherSpec, load_teacher, teacher_spec
from ..distributed import DistEnv, barrier
from ..errors import UserError
from ..growth import PERMUTATION_FILE, reorder_checkpoint
from ..hf import load_config, read_config_json, resolve_model_dir
from ..io import atomic_path
from .config import PretrainConfig, run_dirs
from .student import (Start, Vocab, build_student, check_student, importance_batches,
                      inherited_permutation, plan_student, reorder_student, start_line, start_of)
from .trainer import LOG_FILE, TrainState, Trainer, broadcast_parameters

logger = logging.getLogger(__name__)


def run_teacher(cfg: PretrainConfig, vocab: Vocab) -> TeacherSpec | None:
    """The KD teacher, checked from its config against the vocab (None for MLM); its weights
    are loaded once the student has been checked against it (`load_teacher`)."""
    if cfg.objective == Scheme.MLM:
        if cfg.teacher_model:
            # The KD losses match the teacher's last-layer attention head by head, and an MLM
            # supernet samples fewer heads than it holds: for most archs there is nothing to
            # match. A hidden-state-only term would be a third objective; not added.
            logger.warning("--teacher_model %s is not used: --mlm_loss trains without a teacher "
                           "(the MLM scheme samples head counts, the attention loss needs all "
                           "of the teacher's heads; distil with the KD objective instead)",
                           cfg.teacher_model)
        return None
    spec = teacher_spec(cfg.teacher_model)
    if spec.vocab_size != len(vocab.tokens):
        raise UserError(f"teacher vocab_size {spec.vocab_size} differs from the student's "
                        f"{len(vocab.tokens)}-token vocab")
    return spec


def build_data(cfg: PretrainConfig, vocab: Vocab) -> tuple[PretrainingDataset, MaskingCollator]:
    """The memory-mapped shards (checked against the vocab and lower-casing) and the masking."""
    dataset = PretrainingDataset(cfg.pregenerated_data, cfg.max_seq_length,
                                 vocab_file=str(vocab.file),
                                 debug_limit=cfg.debug_limit if cfg.debug else None)
    if len(dataset) == 0:
        raise UserError(f"{cfg.pregenerated_data} holds no training sequences")
    lower = dataset.metadata.get("do_lower_case")
    if lower is not None and bool(lower) != cfg.do_lower_case:
        raise UserError(f"{cfg.pregenerated_data} was tokenised with do_lower_case={bool(lower)}; "
                        f"{'pass' if lower else 'drop'} --do_lower_case so the saved tokenizer "
                        f"matches the data")
    collator = MaskingCollator(
        vocab_size=len(vocab.tokens), mask_token_id=vocab.specials["[MASK]"],
        pad_token_id=vocab.specials["[PAD]"], special_token_ids=sorted(vocab.specials.values()),
        max_seq_length=cfg.max_seq_length, masked_lm_prob=cfg.masked_lm_prob,
        max_predictions_per_seq=cfg.max_predictions_per_seq, seed=cfg.seed,
        original_masking=cfg.original_masking)
    return dataset, collator


def resume_point(cfg: PretrainConfig, run_dir: Path) -> Path | None:
    """The checkpoint --resume names (verified), or None; refuses to train over a run."""
    if cfg.resume == "auto":
        found = latest_valid_checkpoint(run_dir)
        if found is None:
            logger.info("--resume auto: no complete checkpoint in %s, starting fresh", run_dir)
        return found
    if cfg.resume:
        verify_checkpoint(Path(cfg.resume))
        return Path(cfg.resume)
    if find_checkpoints(run_dir) and not cfg.overwrite_output_dir:
        raise UserError(f"{run_dir} already holds checkpoints: pass --resume auto to continue, "
                        f"--overwrite_output_dir to start over, or another --cache_dir")
    return None


def prepare_output_dirs(cfg: PretrainConfig, env: DistEnv, run_dir: Path, tb_dir: Path) -> None:
    """Rank 0 creates the run's directories (clearing an overwritten run); the others wait."""
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tb_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_staging(run_dir)
        if stale:
            logger.info("removed %d directory(ies) a killed run left half-written in %s: %s",
                        len(stale), run_dir, ", ".join(stale))
        if cfg.overwrite_output_dir and not cfg.resume:
            # Starting over: old checkpoints must not be picked up by a later --resume auto.
            for old in find_checkpoints(run_dir):
                shutil.rmtree(old)
            (run_dir / LOG_FILE).unlink(missing_ok=True)
    barrier(env)

def run_reorder_only(cfg: PretrainConfig) -> Path:
    """--reorder_only OUT_DIR: a reordered full copy of --student_model, no training."""
    src = resolve_model_dir(cfg.student_model, need_weights=True)
    out = Path(cfg.reorder_only)
    if out.resolve() == src.resolve():
        raise UserError(f"--reorder_only {out} is --student_model itself; choose another "
                        f"directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite_output_dir:
        raise UserError(f"{out} exists and is not empty; pass --overwrite_output_dir to replace "
                        f"it")
    vocab = Vocab.of_model(src)
    saved = read_config_json(src).get("attention_scheme")
    scheme = Scheme.resolve(saved, cfg.reorder_scheme, default=Scheme.KD, what=str(src))
    positions = load_config(src, scheme).max_position_embeddings
    dataset, _ = build_data(cfg, vocab)
    if int(dataset.lengths.max()) > positions:
        raise UserError(f"{cfg.pregenerated_data} holds sequences of up to "
                        f"{int(dataset.lengths.max())} tokens, more than the "
                        f"{positions} positions of {src}")
    batches = importance_batches(cfg, dataset, vocab)
    set_seed(cfg.seed)
    for stale in out.parent.glob(f".{out.name}.*.tmp") if out.parent.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # what a killed --reorder_only left
    with atomic_path(out) as tmp:
        reorder_checkpoint(src, batches, tmp, scheme, cfg.reorder_importance, cfg.seed)
    logger.info("wrote the reordered copy of %s (%s scheme, %s importance) to %s", src,
                scheme.name, cfg.reorder_importance.value, out)
    return out


def run_pretraining(cfg: PretrainConfig, env: DistEnv) -> TrainState | None:
    """What pre_training.py calls: check every input before anything is written or logged
    (flags, vocab, teacher and student configs, data, checkpoints), read the weights, then
    prepare the output directories and train (or, with --reorder_only, write the reordered
    copy and return None)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.reorder_only:
        if env.is_main:
            run_reorder_only(cfg)
        barrier(env)
        return None
    student_dir = resolve_model_dir(cfg.student_model, need_weights=cfg.further_train)
    if cfg.reorder and start_of(cfg, student_dir) != Start.PRETRAINED:
        raise UserError(f"--reorder sorts pretrained units by importance, but {student_dir} "
                        f"holds no weights (only a config)")
    vocab = Vocab.of_model(student_dir)
    spec = run_teacher(cfg, vocab)
    plan = plan_student(cfg, student_dir, spec.hidden_size if spec else None)
    check_student(cfg, plan, vocab, spec)
    inherited = (inherited_permutation(student_dir, plan.config)
                 if plan.start == Start.PRETRAINED else None)
    dataset, collator = build_data(cfg, vocab)
    run_dir, tb_dir = run_dirs(cfg, env.world_size)
    resume_from = resume_point(cfg, run_dir)
    set_seed(cfg.seed)
    model, fresh_line = build_student(plan, inherited)
    if env.is_main and resume_from is None:
        logger.info(start_line(plan.start, student_dir))
        if fresh_line:
            logger.info(fresh_line)
    teacher = load_teacher(spec, env.device) if spec else None
    model.to(env.device)  # NCCL broadcasts device tensors; the reorder scores run there
    extra_files = {PERMUTATION_FILE: inherited.record} if inherited else {}
    if cfg.reorder and resume_from is None and env.is_main:
        # Once, on a fresh start, on rank 0 (broadcast below); a resumed run loads the
        # permuted weights and their permutation from its checkpoint.
        extra_files[PERMUTATION_FILE] = reorder_student(cfg, model, student_dir, dataset, vocab,
                                                        inherited)
    # A different seed per rank for dropout; the model itself was built identically.
    torch.manual_seed(cfg.seed + env.rank)
    broadcast_parameters(env, model)
    trainer = Trainer(cfg, env, model, dataset, collator, plan.space, plan.fixed, student_dir,
                      teacher=teacher, run_dir=run_dir, tb_dir=tb_dir, extra_files=extra_files)
    # Checked before anything is written (the manifest's hashes are read once, here).
    info = trainer.check_resume(resume_from) if resume_from is not None else None
    prepare_output_dirs(cfg, env, run_dir, tb_dir)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from, info)
    return trainer.train()
