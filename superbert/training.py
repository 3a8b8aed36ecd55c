"""SuperPLM pre-training: the run's config, arch sampling, the objective, the loop, resume.

The optimiser and schedule live in `optim.py`, the checkpoint files in `checkpoint.py`.

One visible loop (`Trainer.train`). Per optimizer step:
1. take the step's GAS micro-batches and count, over every micro-batch and every rank, the
   elements each loss averages over (masked tokens for MLM; real tokens and token pairs for
   KD): one all-reduce of a few integers;
2. sample the step's sub-arch (`SearchSpace.sample(random.Random(arch_seed(seed, step, k)))`,
   the same on every rank and independent of the world size) and set it once;
3. forward/backward each micro-batch with its summed loss divided by the *global* count, so
   the gradient is exactly that of the mean over the whole step, whatever the world size and
   accumulation (the original forgot to divide the MLM loss by GAS and stepped one micro-batch
   early);
4. sum gradients over ranks (see `sync_gradients`), clip, step, schedule.

Gradients are summed after backward by hand rather than with DDP: this is what the original's
apex DDP did (`delay_allreduce=True`: only parameters that received a gradient, after
backward), it is exact when one step runs several forwards (accumulation, several archs,
`--sandwich`) without DDP's `find_unused_parameters` graph walk, and it keeps a parameter no
rank used at `grad=None`, so the optimiser treats it exactly as a single process does.

Where this differs from the original (each a fix, or a flag keeps the original's behaviour):
- arch seeds depend on (seed, step, index), not on the world size (`arch_seed`);
- losses are divided by the global element count of the step (MLM: masked tokens; KD: see
  `distill.py`), so GAS and world size do not change the objective;
- a trailing window of fewer than GAS micro-batches at the end of an epoch is dropped (data
  short of one whole step is one partial step per epoch);
- a --student_model with weights is the supernet's start (the original always started from
  scratch; --scratch still does), optionally reordered by unit importance (--reorder,
  `growth.py`) once, before the first step of a fresh run;
- --max_steps ends with a checkpoint of its step; --resume refuses changed settings unless
  --resume_changed_settings, and drops a killed run's records after the resumed step;
- every checkpoint (epoch_<e> and step_<n>) carries optimizer, scheduler, scaler, RNG and data
  position, and `--resume` continues exactly (`--continue_index` only skipped epochs);
- `DistributedSampler.set_epoch` is called every epoch (the original reshuffled identically);
- `--debug` keeps the first 20000 sequences of the data (the original: per shard);
- the swapped mask/segment ids and the masking quirks are `--original_input_order` and
  `--original_masking`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .arch import Arch, Scheme, SearchSpace, arch_of_config, validate_arch
from .checkpoint import (OPTIMIZER_FILE, TRAINER_STATE, find_checkpoints, latest_valid_checkpoint,
                         load_state_file,
                         remove_staging, rng_state, set_rng_state, set_seed, verify_checkpoint,
                         write_manifest)
from .cli import progress_seconds
from .configuration import AutoTinyBertConfig
from .data.masking import MaskingCollator
from .data.shards import PretrainingDataset, sample_batches
from .distill import TeacherSpec, kd_counts, kd_loss_sums, load_teacher, teacher_spec
from .distributed import DistEnv, all_gather_object, all_reduce_sum, barrier
from .errors import UserError
from .growth import (PERMUTATION_FILE, Permutation, check_sliceable, permutation_record,
                     read_permutation, reorder, reorder_checkpoint, supernet_from_pretrained)
from .hf import (has_weights, load_config, load_model, normalize_keys, read_config_json,
                 read_state_dict, read_vocab, resolve_model_dir, save_model)
from .io import atomic_path
from .modeling import AutoTinyBertForMaskedLM
from .optim import make_optimizer, resolve_warmup, warmup_linear
from .pretraining.config import PretrainConfig, run_dirs

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")




# ---- arch sampling -----------------------------------------------------------------------------
def arch_seed(seed: int, step: int, index: int, per_step: int) -> int:
    """Seed of the `index`-th arch of optimizer step `step`: the same on every rank and for
    any world size (the original used `step * world_size + index`, which ties the archs to the
    GPU count and overlaps between steps)."""
    return seed * 1_000_003 + step * per_step + index


def step_archs(space: SearchSpace | None, fixed: Arch | None, step: int, cfg: PretrainConfig) -> list[Arch]:
    """The archs run on every micro-batch of optimizer step `step` (largest first)."""
    if fixed is not None:
        return [fixed]
    n = cfg.sample_times_per_batch
    archs = [space.sample(random.Random(arch_seed(cfg.seed, step, k, n))) for k in range(n)]
    if cfg.sandwich:
        archs = [space.largest(), space.smallest()] + archs
    return archs


# ---- data --------------------------------------------------------------------------------------
class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler whose epoch can start part-way (exact resume of the data order).

    With one replica this is a seeded shuffler, and 2 ranks with batch B see exactly the
    examples 1 rank with batch 2B sees in each step (rank r takes every world-th index).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


# ---- precision ---------------------------------------------------------------------------------
def autocast_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.fp16:
        if device.type == "cuda":
            return torch.float16
        warnings.warn("--fp16 on CPU: running in bfloat16 autocast instead (float16 matmuls "
                      "are not supported or slow on CPU)")
        logger.warning("--fp16 on CPU: using bfloat16 autocast instead")
        return torch.bfloat16
    if cfg.bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--bf16: this GPU does not support bfloat16; use --fp16")
        return torch.bfloat16
    return None


# ---- the loss module ---------------------------------------------------------------------------
@dataclass
class StepCounts:
    """Global element counts of one optimizer step (all micro-batches, all ranks)."""

    masked: int = 0
    tokens: int = 0
    rep: int = 0
    att: int = 0


class Objective:
    """The loss of one micro-batch for the active sub-arch, normalised by global counts."""

    def __init__(self, model: nn.Module, kind: Scheme, original_input_order: bool, teacher=None):
        self.model = model
        self.kind = kind
        self.original_input_order = original_input_order
        self.teacher = teacher

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
        if self.kind == Scheme.KD:
            attend, _ = self.inputs(batch)
            B, T = batch["input_ids"].shape
            rep, att = kd_counts(attend, B, T, fit_size, heads)
        else:
            rep = att = 0
        return [masked, tokens, rep, att]

    def __call__(self, batch: dict[str, torch.Tensor], counts: StepCounts, teacher_out=None,
                 soft_targets: torch.Tensor | None = None, want_logits: bool = False,
                 n_local: int | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """(loss to backprop, detached loss terms, masked-row logits if asked)."""
        attend, segments = self.inputs(batch)
        bert = self.model.bert
        if self.kind == Scheme.KD:
            out = bert(batch["input_ids"], attend, segments, output_attention_scores=True)
            fit = bert.dense_fit(out.last_hidden_state)
            rep_sum, att_sum = kd_loss_sums(fit, out.last_attention_scores, teacher_out, attend)
            rep = rep_sum / counts.rep
            att = att_sum / counts.att
            loss = rep + att
            return loss, {"loss": loss.detach(), "rep_loss": rep.detach(),
                          "att_loss": att.detach()}, None
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


# ---- gradient synchronisation ------------------------------------------------------------------
def sync_gradients(env: DistEnv, params: Sequence[nn.Parameter], bucket_bytes: int = 64 << 20) -> None:
    """Sum gradients over ranks, after backward (apex `delay_allreduce` style).

    A parameter with a gradient on any rank gets the sum (zeros where a rank had None); one no
    rank touched keeps `grad=None` everywhere, exactly as in a single process.
    """
    if not env.distributed:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=env.device)
    all_reduce_sum(env, used)
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        all_reduce_sum(env, flat)
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset: offset + n].view_as(g))
            offset += n
        bucket, size = [], 0

    dtype = None
    for p, u in zip(params, used.tolist()):
        if not u:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        g = p.grad
        if dtype is not None and g.dtype != dtype:
            flush()
        dtype = g.dtype
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes:
            flush()
    flush()


def broadcast_parameters(env: DistEnv, model: nn.Module) -> None:
    if env.distributed:
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)


# ---- the trainer -------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where the run stands (saved in every checkpoint)."""

    global_step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of `epoch` already consumed (per rank)


@dataclass
class Trainer:
    """The training loop over a built model, data and optional teacher."""

    cfg: PretrainConfig
    env: DistEnv
    model: nn.Module
    dataset: Dataset
    collator: Any
    space: SearchSpace | None
    fixed_arch: Arch | None
    vocab_source: str | os.PathLike
    teacher: Any = None
    run_dir: Path | None = None
    tb_dir: Path | None = None
    state: TrainState = field(default_factory=TrainState)
    # Files saved beside the weights in every checkpoint (the reorder's permutation.json).
    extra_files: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg, env = self.cfg, self.env
        self.device = env.device
        self.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.model, cfg.optimizer, cfg.learning_rate,
                                        cfg.adam_epsilon, cfg.weight_decay, cfg.max_grad_norm,
                                        self.device)
        self.sampler = ResumableDistributedSampler(self.dataset, env.world_size, env.rank, cfg.seed)
        workers = cfg.num_workers
        self.loader = DataLoader(
            self.dataset, batch_size=cfg.micro_batch_size, sampler=self.sampler,
            collate_fn=self.collator, num_workers=workers, drop_last=False,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            # Its own generator: creating an iterator must not consume the global torch RNG
            # (dropout), or a resumed run would drift from an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.seed))
        micro_per_epoch = math.ceil(self.sampler.num_samples / cfg.micro_batch_size)
        # A trailing window of fewer than GAS micro-batches is dropped (the original carried
        # its gradient into the next epoch's first step); data that does not fill one step is
        # one partial step per epoch (the losses are means over what the step holds).
        self.micro_per_step = min(cfg.gradient_accumulation_steps, micro_per_epoch)
        self.steps_per_epoch = micro_per_epoch // self.micro_per_step
        if self.sampler.num_samples < cfg.train_batch_size:
            logger.warning("the data (%d sequences over %d rank(s)) is less than one optimizer "
                           "step of %d sequences per rank: each epoch is one partial step",
                           len(self.dataset), env.world_size, cfg.train_batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps, self.warmup_how = resolve_warmup(
            self.total_steps, cfg.warmup_steps, cfg.warmup_proportion)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_linear(s, self.total_steps, self.warmup_steps))
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.scaler = None
        if self.amp_dtype == torch.float16:
            kw = {"init_scale": cfg.loss_scale} if cfg.loss_scale > 0 else {}
            self.scaler = torch.amp.GradScaler("cuda", **kw)
        kind = cfg.objective
        self.objective = Objective(self.model, kind, cfg.original_input_order)
        self.fit_size = int(self.model.config.fit_size or 0)
        self.heads = int(self.model.config.num_attention_heads)
        self.writer = None
        self.log_path = self.run_dir / LOG_FILE if self.run_dir is not None else None
        # Loss curves per sampled arch size: the share of the largest arch's parameters.
        largest = self.fixed_arch or self.space.largest()
        self.size_norm = largest.param_count(self.model.config.vocab_size)

    # ---- checkpoints ----
    # Settings a resumed run must share with its checkpoint, and the value a checkpoint
    # written before a setting was recorded implicitly had.
    RUN_KEYS = ("mlm_loss", "further_train", "train_batch_size", "gradient_accumulation_steps",
                "max_seq_length", "epochs", "learning_rate", "seed", "optimizer",
                "sample_times_per_batch", "sandwich", "masked_lm_prob", "original_masking",
                "original_input_order", "fp16", "bf16", "reorder", "reorder_samples",
                "reorder_importance", "weight_decay", "adam_epsilon", "max_grad_norm", "debug")
    # Recorded later than the others: the value an older checkpoint implicitly had (a key
    # missing from an older checkpoint and not listed here is not compared).
    RUN_KEYS_ADDED = {"reorder": False, "reorder_samples": None, "reorder_importance": None}
    # The data position (micro-batches into the epoch) and the weights' meaning depend on
    # these: they cannot change on resume, whatever --resume_changed_settings says.
    FIXED_ON_RESUME = ("train_batch_size", "gradient_accumulation_steps", "further_train")

    def checkpoint_info(self) -> dict[str, Any]:
        cfg = self.cfg
        run = {k: getattr(cfg, k) for k in self.RUN_KEYS}
        run["reorder_importance"] = str(cfg.reorder_importance)
        if not cfg.reorder:  # without --reorder, how importance would be measured is no setting
            run["reorder_samples"] = run["reorder_importance"] = None
        run["scheme"] = str(self.model.config.attention_scheme)
        run["space"] = (f"fixed arch {self.fixed_arch}" if self.fixed_arch else
                        " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.space).items()))
        run["pregenerated_data"] = str(Path(cfg.pregenerated_data).resolve())
        teacher = cfg.teacher_model if cfg.objective == Scheme.KD else None
        run["teacher_model"] = (str(Path(teacher).resolve()) if teacher and Path(teacher).is_dir()
                                else teacher)
        run["total_steps"], run["warmup_steps"] = self.total_steps, self.warmup_steps
        return {"global_step": self.state.global_step, "epoch": self.state.epoch,
                "micro_in_epoch": self.state.micro_in_epoch, "world_size": self.env.world_size,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "run": run}

    def save_checkpoint(self, name: str) -> Path | None:
        """Write `run_dir/name` atomically: model dir (save_model), optimizer.pt, trainer
        state with every rank's RNG, and the manifest last."""
        rngs = all_gather_object(self.env, rng_state())
        if not self.env.is_main:
            barrier(self.env)
            return None
        target = self.run_dir / name
        info = self.checkpoint_info()
        with atomic_path(target) as tmp:
            save_model(self.model, tmp, self.vocab_source, do_lower_case=self.cfg.do_lower_case,
                       extra_files=self.extra_files)
            torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            torch.save({"info": info, "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler else None,
                        "rng": rngs, "sample_config": dataclasses.asdict(self.model.active_sample())},
                       tmp / TRAINER_STATE)
            write_manifest(tmp, info)
        logger.info("saved checkpoint %s (step %d)", target, self.state.global_step)
        barrier(self.env)
        return target

    def check_resume(self, directory: Path) -> dict[str, Any]:
        """The manifest of `directory` if this run may continue from it (UserError otherwise):
        intact, the same world size, and the same settings unless --resume_changed_settings
        accepts them. Reads only; run before anything is written."""
        info = verify_checkpoint(directory)
        if info.get("world_size") != self.env.world_size:
            raise UserError(f"checkpoint {directory} was written by {info.get('world_size')} "
                            f"process(es); resume with the same number (now {self.env.world_size})")
        changed = self.changed_settings(info)
        fixed = [c for c in changed if c[0] in self.FIXED_ON_RESUME]
        if fixed or (changed and not self.cfg.resume_changed_settings):
            hint = "" if fixed else "; pass --resume_changed_settings to continue with this run's"
            raise UserError(f"checkpoint {directory} was trained with other settings: "
                            f"{_describe(fixed or changed)}{hint}")
        return info

    def load_checkpoint(self, directory: Path, info: dict[str, Any] | None = None) -> None:
        """Continue from `directory` (`info`: its manifest as `check_resume` returned it)."""
        info = info if info is not None else self.check_resume(directory)
        changed = self.changed_settings(info)
        state = normalize_keys(read_state_dict(directory))
        own = self.model.state_dict()
        missing = [k for k in own if k not in state and not k.startswith("cls.predictions.decoder.")]
        if missing:
            raise UserError(f"checkpoint {directory} lacks weights, e.g. {missing[0]}")
        with torch.no_grad():
            for k, t in own.items():
                if k in state:
                    t.copy_(state[k])
        self.model.tie_mlm_decoder()
        # A reordered run's checkpoints hold permuted weights and the permutation: carried on
        # into the checkpoints this run writes, never applied again.
        self.extra_files.pop(PERMUTATION_FILE, None)
        if (directory / PERMUTATION_FILE).is_file():
            self.extra_files[PERMUTATION_FILE] = (directory / PERMUTATION_FILE).read_bytes()
        # This run's optimiser settings (lr, weight decay, eps, clip), before the checkpoint's
        # replace them: put back when --resume_changed_settings accepts a change.
        mine = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            opt = load_state_file(directory / OPTIMIZER_FILE, map_location=self.device)
            self.optimizer.load_state_dict(opt)
            trainer = load_state_file(directory / TRAINER_STATE)
        except Exception as err:  # verified sizes and hashes, so this is a format mismatch
            raise UserError(f"cannot load the optimizer/trainer state of {directory}: {err}") from None
        self.scheduler.load_state_dict(trainer["scheduler"])
        if changed:
            logger.warning("resuming %s with this run's settings (--resume_changed_settings): %s",
                           directory, _describe(changed))
            for group, settings in zip(self.optimizer.param_groups, mine):
                group.update(settings)
            # This run's peak lr on this run's schedule (total and warm-up steps), from the
            # checkpoint's step on.
            self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
            factor = warmup_linear(self.scheduler.last_epoch, self.total_steps, self.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        if self.scaler is not None and trainer.get("scaler"):
            self.scaler.load_state_dict(trainer["scaler"])
        set_rng_state(trainer["rng"][self.env.rank])
        self.state = TrainState(int(info["global_step"]), int(info["epoch"]),
                                int(info["micro_in_epoch"]))
        if self.env.is_main and self.log_path is not None:
            dropped = truncate_log(self.log_path, self.state.global_step)
            if dropped:
                logger.info("%s: dropped %d record(s) after step %d, written by the run that "
                            "stopped there (they are trained again)", self.log_path, dropped,
                            self.state.global_step)
        logger.info("resumed from %s: step %d, epoch %d, %d micro-batches into it", directory,
                    self.state.global_step, self.state.epoch, self.state.micro_in_epoch)

    def changed_settings(self, info: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(setting, the checkpoint's value, this run's) for every setting that differs."""
        saved_run = info.get("run", {})
        saved_run = {"total_steps": info.get("total_steps"),
                     "warmup_steps": info.get("warmup_steps"), **saved_run}
        changed = []
        for key, value in self.checkpoint_info()["run"].items():
            if key not in saved_run and key not in self.RUN_KEYS_ADDED:
                continue  # not recorded by the code that wrote the checkpoint
            saved = saved_run.get(key, self.RUN_KEYS_ADDED.get(key))
            if saved != value:
                changed.append((key, saved, value))
        return changed

    # ---- logging ----
    def _open_tensorboard(self) -> None:
        """Rank 0's scalars; a resumed run first drops the events a killed run wrote after its
        checkpoint (purge_step), so no step is shown twice."""
        if not self.env.is_main or self.tb_dir is None:
            return
        purge = self.state.global_step + 1 if self.state.global_step else None
        self.writer = SummaryWriter(str(self.tb_dir), purge_step=purge)

    def _log(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            for key in ("loss", "rep_loss", "att_loss", "lr", "tokens_per_s"):
                if key in record:
                    self.writer.add_scalar(key, record[key], record["step"])
            for size, loss in record.get("loss_by_size", {}).items():
                self.writer.add_scalar(f"loss_by_arch_size/{size}_of_largest", loss,
                                       record["step"])
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    # ---- the loop ----
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) for k, v in batch.items()}

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batches: list[dict[str, torch.Tensor]], archs: list[Arch]
                   ) -> tuple[dict[str, torch.Tensor], StepCounts, list[torch.Tensor]]:
        """Forward/backward the step's micro-batches for each arch; returns the loss terms
        summed over archs, the counts, and each arch's loss (this rank's share)."""
        cfg = self.cfg
        local = torch.tensor([self.objective.counts(b, self.fit_size, self.heads) for b in batches],
                             dtype=torch.int64).sum(0)
        glob = all_reduce_sum(self.env, local.to(self.device)).tolist()
        counts = StepCounts(*map(int, glob))
        terms: dict[str, torch.Tensor] = {}
        arch_losses = [torch.zeros((), device=self.device) for _ in archs]
        if self.objective.kind == Scheme.MLM and counts.masked == 0:
            logger.warning("step %d: no masked token in the whole batch; step skipped",
                           self.state.global_step)
            return terms, counts, []
        for batch in batches:
            n_masked = int((batch["labels"] != -100).sum()) if "labels" in batch else 0
            batch = self._to_device(batch)
            teacher_out = None
            if self.teacher is not None:
                attend, segments = self.objective.inputs(batch)
                with self._autocast():
                    teacher_out = self.teacher(batch["input_ids"], attend, segments)
            soft = None
            for i, arch in enumerate(archs):
                self.model.set_sample_config(arch)
                distil = cfg.sandwich and i > 0 and self.objective.kind == Scheme.MLM
                with self._autocast():
                    loss, parts, logits = self.objective(
                        batch, counts, teacher_out,
                        soft_targets=soft if distil else None,
                        want_logits=cfg.sandwich and i == 0 and self.objective.kind == Scheme.MLM,
                        n_local=n_masked)
                if logits is not None and i == 0:
                    soft = logits.detach().softmax(-1)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0) + v.float()
                arch_losses[i] = arch_losses[i] + parts["loss"].float()
        sync_gradients(self.env, self.params)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return terms, counts, arch_losses

    def train(self) -> TrainState:
        cfg, env = self.cfg, self.env
        self._open_tensorboard()
        if env.is_main:
            logger.info("%d sequences, %d rank(s), %d per rank per step (%d x %d micro-batches); "
                        "%d optimizer steps per epoch, %d in all; warm-up %d (%s); %s",
                        len(self.dataset), env.world_size, cfg.train_batch_size,
                        self.micro_per_step, cfg.micro_batch_size, self.steps_per_epoch,
                        self.total_steps, self.warmup_steps, self.warmup_how,
                        f"fixed arch {self.fixed_arch.short()}" if self.fixed_arch else
                        f"{self.space.scheme.upper()} space of {self.space.size():,} archs")
            if cfg.max_steps and cfg.max_steps < self.total_steps:
                logger.info("--max_steps %d: the run stops there, inside the schedule of %d "
                            "steps above (learning rate and warm-up follow that schedule)",
                            cfg.max_steps, self.total_steps)
        # What this run will do: the schedule's steps, or fewer with --max_steps.
        last_step = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        bar = None
        if env.is_main and cfg.progress and sys.stdout.isatty():
            bar = tqdm(total=last_step, initial=self.state.global_step, unit="step",
                       dynamic_ncols=True, desc="pre-training")
        window = self._new_window()
        progress = Progress(last_step, self.state.global_step, env.world_size) \
            if env.is_main and bar is None else None
        self.model.train()
        stop = bool(cfg.max_steps and self.state.global_step >= cfg.max_steps)
        while self.state.epoch < cfg.epochs and not stop:
            epoch = self.state.epoch
            skip = self.state.micro_in_epoch
            self.sampler.set_epoch(epoch, start=skip * cfg.micro_batch_size)
            if hasattr(self.collator, "set_epoch"):
                self.collator.set_epoch(epoch)
            it = iter(self.loader)
            for _ in range(skip // self.micro_per_step, self.steps_per_epoch):
                t0 = time.perf_counter()
                batches = [next(it) for _ in range(self.micro_per_step)]
                window["wait"] += time.perf_counter() - t0
                archs = step_archs(self.space, self.fixed_arch, self.state.global_step, cfg)
                terms, counts, arch_losses = self.train_step(batches, archs)
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.global_step += 1
                self.state.micro_in_epoch += self.micro_per_step
                self._add_to_window(window, terms, counts, archs, arch_losses)
                step = self.state.global_step
                stop = bool(cfg.max_steps and step >= cfg.max_steps)
                if step % cfg.logging_steps == 0 or step == self.total_steps or stop:
                    self._log_window(window, archs, bar)  # the last steps are logged too
                if bar is not None:
                    bar.update(1)
                if progress is not None:
                    progress.step(terms.get("loss"), counts.tokens)
                if self.run_dir is not None and (
                        stop or (cfg.save_steps and step % cfg.save_steps == 0)):
                    # --max_steps ends with a checkpoint of its last step, whatever
                    # --save_steps says.
                    self.save_checkpoint(f"step_{step}")
                if stop:
                    break
            del it
            if stop:
                break
            self.state = TrainState(self.state.global_step, epoch + 1, 0)
            if self.run_dir is not None:
                # The original's per-epoch checkpoint (0-based epoch number).
                self.save_checkpoint(f"epoch_{epoch}")
        if bar is not None:
            bar.close()
        if progress is not None:
            progress.done()
        if self.writer is not None:
            self.writer.close()
        return self.state

    # ---- logging ----
    def _new_window(self) -> dict[str, Any]:
        return {"terms": {}, "steps": 0, "tokens": 0, "wait": 0.0,
                "start": time.perf_counter(),
                "by_size": torch.zeros(2, len(SIZE_BUCKETS), device=self.device)}

    def size_bucket(self, arch: Arch) -> int:
        """Which SIZE_BUCKETS range an arch's share of the largest arch's parameters is in."""
        share = arch.param_count(self.model.config.vocab_size) / self.size_norm
        return min(sum(share > hi for _, hi in SIZE_BUCKETS), len(SIZE_BUCKETS) - 1)

    def _add_to_window(self, window: dict[str, Any], terms: dict[str, torch.Tensor],
                       counts: StepCounts, archs: list[Arch], arch_losses: list[torch.Tensor]
                       ) -> None:
        for k, v in terms.items():
            window["terms"][k] = window["terms"].get(k, 0) + v
        window["steps"] += 1
        window["tokens"] += counts.tokens
        for arch, loss in zip(archs, arch_losses):
            b = self.size_bucket(arch)
            window["by_size"][0, b] += loss  # on the device: no sync per step
            window["by_size"][1, b] += 1

    def _log_window(self, window: dict[str, Any], archs: list[Arch], bar) -> None:
        names = sorted(window["terms"])
        local = torch.stack([window["terms"][k] for k in names]) if names else torch.zeros(0)
        values = all_reduce_sum(self.env, local.to(self.device)).tolist() if names else []
        # Each rank's loss is its share of the global mean: the sum over ranks is the loss.
        by_size = window["by_size"].clone()
        all_reduce_sum(self.env, by_size[0])
        by_size = by_size.cpu()
        rank_archs = all_gather_object(self.env, [str(a) for a in archs])
        if any(r != rank_archs[0] for r in rank_archs):
            raise RuntimeError(f"ranks sampled different archs at step {self.state.global_step}: "
                               f"{rank_archs}")
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        n = max(window["steps"], 1)
        record = {"step": self.state.global_step, "epoch": self.state.epoch,
                  "lr": self.scheduler.get_last_lr()[0],
                  **{k: v / n for k, v in zip(names, values)},
                  "tokens_per_s": window["tokens"] / elapsed,
                  "data_wait": window["wait"] / elapsed,
                  "arch": [str(a) for a in archs], "rank_archs": rank_archs}
        sizes = {f"{lo}-{hi}%": float(total / count) for (lo, hi), total, count
                 in zip(SIZE_BUCKETS_PCT, by_size[0].tolist(), by_size[1].tolist()) if count}
        if sizes:
            record["loss_by_size"] = sizes
        if self.env.is_main:
            self._log(record)
            extra = "".join(f" {k} {record[k]:.4f}" for k in ("rep_loss", "att_loss") if k in record)
            msg = (f"step {record['step']}/{self.total_steps} epoch {record['epoch']} "
                   f"loss {record.get('loss', float('nan')):.4f}{extra} lr {record['lr']:.3e} "
                   f"tok/s {record['tokens_per_s']:.0f} data-wait {100 * record['data_wait']:.1f}% "
                   f"arch {', '.join(a.short() for a in archs)}")
            if bar is not None:
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                                lr=f"{record['lr']:.2e}")
            logger.info(msg)
        window.update(self._new_window())


# The ranges of an arch's share of the largest arch's parameters the loss is logged per.
SIZE_BUCKETS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
SIZE_BUCKETS_PCT = tuple((round(100 * lo), round(100 * hi)) for lo, hi in SIZE_BUCKETS)
# Without a progress bar (not a terminal, or --no_progress): a line this often, at most.
PROGRESS_SECONDS = 20.0


class Progress:
    """Rank 0's progress line when there is no bar: step/total, loss, throughput and ETA,
    every PROGRESS_SECONDS (or SUPERBERT_PROGRESS_SECONDS). Local values only (no collective at a time-based point): the loss
    is rank 0's share x the world size, exact in one process, an estimate with more."""

    def __init__(self, total: int, done: int, world_size: int = 1):
        self.total, self.first, self.world_size = total, done, world_size
        self.done_steps = done
        self.start = self.last = time.perf_counter()
        self.loss_sum, self.loss_n, self.tokens = 0, 0, 0
        self.seconds = progress_seconds(PROGRESS_SECONDS)

    def step(self, loss: torch.Tensor | None, tokens: int) -> None:
        self.done_steps += 1
        if loss is not None:
            self.loss_sum = self.loss_sum + loss.detach()  # summed on the device
            self.loss_n += 1
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= self.seconds:
            self._line(now)

    def done(self) -> None:
        if self.loss_n:
            self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        steps = self.done_steps - self.first
        rate = steps / max(now - self.start, 1e-9)
        eta = (self.total - self.done_steps) / rate if rate > 0 else float("inf")
        loss = float(self.loss_sum) * self.world_size / self.loss_n if self.loss_n else float("nan")
        logger.info("progress: step %d/%d (%.0f%%) loss %.4f %.2f step/s %.0f tok/s ETA %s",
                    self.done_steps, self.total, 100 * self.done_steps / max(self.total, 1), loss,
                    rate, self.tokens / max(now - self.start, 1e-9), _duration(eta))
        self.last = now
        self.loss_sum, self.loss_n = 0, 0


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _describe(changed: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key}={saved!r} (this run: {now!r})" for key, saved, now in changed)


def truncate_log(path: Path, step: int) -> int:
    """Keep the records of `path` (train_log.jsonl) up to `step`, atomically; how many went.
    A line a killed run left half-written is dropped too."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
                continue
        except (ValueError, KeyError, TypeError):
            pass
        dropped += 1
    if dropped:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return dropped


# ---- building a run from its config ------------------------------------------------------------
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
    if teacher is not None:
        heads = fixed.heads if fixed else (space.kd_heads if space.scheme == Scheme.KD else None)
        if heads != teacher.num_heads:
            raise UserError(f"the student keeps {heads} attention heads but the teacher has "
                            f"{teacher.num_heads}; the attention loss matches them one to one")


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
