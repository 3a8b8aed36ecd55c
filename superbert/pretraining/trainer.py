"""SuperPLM pre-training: the loop (`Trainer`), its checkpoints, resume and logs.

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
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

from ..arch import Arch, Scheme, SearchSpace
from ..checkpoint import (OPTIMIZER_FILE, TRAINER_STATE, load_state_file, rng_state, set_rng_state,
                          verify_checkpoint, write_manifest)
from ..cli import progress_seconds
from ..distill import KDObjective
from ..distributed import DistEnv, all_gather_object, all_reduce_sum, barrier
from ..errors import UserError
from ..growth import PERMUTATION_FILE
from ..hf import normalize_keys, read_state_dict, save_model
from ..io import atomic_path
from ..optim import make_optimizer, resolve_warmup, warmup_linear
from ..progress import Progress, Tick, duration
from .config import PretrainConfig
from .objective import Objective, StepCounts
from .sampling import ResumableDistributedSampler, step_archs

logger = logging.getLogger(__name__)


LOG_FILE = "train_log.jsonl"

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
        self.objective = Objective(self.model, kind, cfg.original_input_order,
                                   kd_objective=cfg.kd_objective,
                                   relation_heads=cfg.relation_heads)
        if cfg.max_steps and cfg.max_steps < self.warmup_steps:
            logger.warning("--max_steps %d ends inside the warm-up (%d steps): the learning "
                           "rate stops at %.0f%% of --learning_rate", cfg.max_steps,
                           self.warmup_steps, 100 * cfg.max_steps / self.warmup_steps)
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
                "sample_times_per_batch", "num_subnets", "sandwich", "inplace_distill",
                "kd_objective",
                "relation_heads", "masked_lm_prob", "original_masking",
                "original_input_order", "fp16", "bf16", "reorder", "reorder_samples",
                "reorder_importance", "weight_decay", "adam_epsilon", "max_grad_norm", "debug")
    # Recorded later than the others: the value an older checkpoint implicitly had (a key
    # missing from an older checkpoint and not listed here is not compared).
    RUN_KEYS_ADDED = {"reorder": False, "reorder_samples": None, "reorder_importance": None,
                      "num_subnets": None, "inplace_distill": False,
                      "kd_objective": "hidden_attention",
                      "relation_heads": 12}
    # The data position (micro-batches into the epoch) and the weights' meaning depend on
    # these: they cannot change on resume, whatever --resume_changed_settings says.
    FIXED_ON_RESUME = ("train_batch_size", "gradient_accumulation_steps", "further_train")

    def checkpoint_info(self) -> dict[str, Any]:
        cfg = self.cfg
        run = {k: getattr(cfg, k) for k in self.RUN_KEYS}
        run["reorder_importance"] = str(cfg.reorder_importance)
        run["kd_objective"] = str(cfg.kd_objective)
        if cfg.objective != Scheme.KD or cfg.kd_objective != KDObjective.RELATION:
            run["relation_heads"] = 12  # unused: recorded as the default, never compared
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
            for key in ("loss", "rep_loss", "att_loss", "relation_loss", "inplace_loss", "lr",
                        "tokens_per_s"):
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
                    teacher_out = self.teacher(batch["input_ids"], attend, segments,
                                               return_qkv=self.objective.relation)
            soft = target = None
            mlm = self.objective.kind == Scheme.MLM
            # In-place distillation from the largest arch (archs[0] under --sandwich): of its
            # MLM predictions always, of its KD outputs with --inplace_distill (besides the
            # teacher, which stays the target).
            inplace = cfg.sandwich and (mlm or cfg.inplace_distill)
            for i, arch in enumerate(archs):
                self.model.set_sample_config(arch)
                distil = inplace and i > 0
                with self._autocast():
                    loss, parts, logits = self.objective(
                        batch, counts, teacher_out,
                        soft_targets=soft if distil and mlm else None,
                        want_logits=inplace and i == 0 and mlm,
                        n_local=n_masked,
                        inplace_target=target if distil and not mlm else None,
                        want_target=inplace and i == 0 and not mlm)
                if logits is not None and i == 0:
                    if mlm:
                        soft = logits.detach().softmax(-1)
                    else:
                        target = logits
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
        meter = ProgressLine(env.world_size)
        # Rank 0 reports: a bar on a terminal (unless --no_progress), else progress lines.
        progress = Progress(last_step, "pre-training", unit="step",
                            initial=self.state.global_step,
                            seconds=progress_seconds(PROGRESS_SECONDS), enabled=env.is_main,
                            bar=cfg.progress, line=meter, logger=logger, dynamic_ncols=True)
        window = self._new_window()
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
                    self._log_window(window, archs, progress)  # the last steps are logged too
                meter.add(terms.get("loss"), counts.tokens)
                progress.update()
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
        progress.close()
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

    def _log_window(self, window: dict[str, Any], archs: list[Arch],
                    progress: Progress) -> None:
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
            extra = "".join(f" {k} {record[k]:.4f}"
                            for k in ("rep_loss", "att_loss", "relation_loss", "inplace_loss")
                            if k in record)
            msg = (f"step {record['step']}/{self.total_steps} epoch {record['epoch']} "
                   f"loss {record.get('loss', float('nan')):.4f}{extra} lr {record['lr']:.3e} "
                   f"tok/s {record['tokens_per_s']:.0f} data-wait {100 * record['data_wait']:.1f}% "
                   f"arch {', '.join(a.short() for a in archs)}")
            progress.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                                 lr=f"{record['lr']:.2e}")
            logger.info(msg)
        window.update(self._new_window())


# The ranges of an arch's share of the largest arch's parameters the loss is logged per.
SIZE_BUCKETS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
SIZE_BUCKETS_PCT = tuple((round(100 * lo), round(100 * hi)) for lo, hi in SIZE_BUCKETS)
# Without a progress bar (not a terminal, or --no_progress): a line this often, at most.
PROGRESS_SECONDS = 20.0


class ProgressLine:
    """Rank 0's progress line off a terminal: step/total, loss, throughput and ETA. Local
    values only (no collective at a time-based point): the loss is rank 0's share x the world
    size, exact in one process, an estimate with more."""

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.loss_sum, self.loss_n, self.tokens = 0, 0, 0

    def add(self, loss: torch.Tensor | None, tokens: int) -> None:
        if loss is not None:
            self.loss_sum = self.loss_sum + loss.detach()  # summed on the device
            self.loss_n += 1
        self.tokens += tokens

    def __call__(self, tick: Tick) -> str:
        loss = float(self.loss_sum) * self.world_size / self.loss_n if self.loss_n else math.nan
        self.loss_sum, self.loss_n = 0, 0
        return (f"progress: step {tick.done}/{tick.total} ({tick.percent:.0f}%) loss {loss:.4f} "
                f"{tick.rate:.2f} step/s {self.tokens / max(tick.elapsed, 1e-9):.0f} tok/s "
                f"ETA {duration(tick.eta)}")


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
