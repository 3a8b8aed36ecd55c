"""SuperPLM pre-training: the optimiser, the schedule, the loop, checkpoints and resume.

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
- a trailing window of fewer than GAS micro-batches at the end of an epoch is dropped;
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
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from superbert.distributed import DistEnv, all_gather_object, all_reduce_sum, barrier
from superbert.io import atomic_path

from .arch import Arch, SearchSpace, arch_of_config, validate_arch
from .errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINT_MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
OPTIMIZER_FILE = "optimizer.pt"
LOG_FILE = "train_log.jsonl"


# ---- optimiser ---------------------------------------------------------------------------------
class BertAdam(Optimizer):
    """The original's BertAdam, as a torch optimiser (the schedule lives in a LR scheduler).

    - Adam moments with no bias correction;
    - weight decay decoupled from the moments, added to the update (`update += wd * p`);
    - each parameter's gradient is first clipped to norm `max_grad_norm` on its own
      (per tensor, as the original; <= 0 disables it).

    Parameters whose grad is None are skipped entirely (no moment decay, no weight decay).
    Under PyTorch >= 2 `zero_grad()` sets grads to None, so a tensor no sub-arch touched in a
    step (layers above the sampled depth, the MLM head in KD) is left alone; a tensor that was
    partly sampled gets zeros in its unsampled slice and, as in the original, those entries
    still move by their decaying momentum and by weight decay. (The original, on PyTorch < 2,
    also kept updating whole untouched tensors with stale momentum; we do not.)
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if lr < 0 or eps < 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise UserError(f"invalid BertAdam hyper-parameters lr={lr} betas={betas} eps={eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("BertAdam does not support sparse gradients")
            ms, vs = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                ms.append(state["next_m"])
                vs.append(state["next_v"])
            # Multi-tensor (foreach) kernels: the same arithmetic as a per-tensor loop, a few
            # launches per group instead of ~10 per parameter, and no temporary update tensor:
            # p - lr * (m / (sqrt(v) + eps) + wd * p) == p * (1 - lr * wd) - lr * m / (sqrt(v) + eps).
            if group["max_grad_norm"] > 0:  # in place, as the original's clip_grad_norm_
                norms = torch.stack(torch._foreach_norm(grads))
                coef = (group["max_grad_norm"] / (norms + 1e-6)).clamp(max=1.0)
                torch._foreach_mul_(grads, list(coef.unbind()))
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, grads, alpha=1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, group["eps"])
            if group["weight_decay"] > 0:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_addcdiv_(params, ms, denom, value=-group["lr"])
        return loss


def no_decay(name: str) -> bool:
    """The original's rule: no weight decay on biases and LayerNorm parameters."""
    return "bias" in name or "LayerNorm" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, kind: str, lr: float, eps: float, weight_decay: float,
                   max_grad_norm: float, device: torch.device) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if kind == "bertadam":
        return BertAdam(groups, lr=lr, eps=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
    if kind == "adamw":
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=lr, eps=eps, betas=(0.9, 0.999), **fast)
    raise UserError(f"unknown optimizer {kind!r}: expected bertadam or adamw")


# ---- schedule ----------------------------------------------------------------------------------
def warmup_linear(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if total <= warmup:
        return 1.0
    return max(0.0, (total - step) / (total - warmup))


def resolve_warmup(total_steps: int, warmup_steps: int | None, warmup_proportion: float | None,
                   default_steps: int = 10000, default_proportion: float = 0.1) -> tuple[int, str]:
    """The seed README's rule: `--warmup_steps` (default 10000) unless only
    `--warmup_proportion` was given; steps that reach past the run switch to the proportion,
    with a warning. Returns (warm-up steps, how they were chosen)."""
    proportion = default_proportion if warmup_proportion is None else warmup_proportion
    if not 0 <= proportion < 1:
        raise UserError(f"--warmup_proportion must be in [0, 1), got {proportion}")
    if warmup_steps is not None and warmup_steps < 0:
        raise UserError(f"--warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps is None and warmup_proportion is not None:
        return int(proportion * total_steps), f"proportion {proportion}"
    steps = default_steps if warmup_steps is None else warmup_steps
    if steps >= total_steps:
        switched = int(proportion * total_steps)
        logger.warning("warm-up of %d steps exceeds the run's %d optimizer steps: using "
                       "--warmup_proportion %.3g instead, i.e. %d warm-up steps", steps,
                       total_steps, proportion, switched)
        return switched, f"proportion {proportion} (switched from {steps} steps)"
    return steps, f"{steps} steps"


# ---- the configuration of a run ----------------------------------------------------------------
@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pre-training run is (what pre_training.py's flags say)."""

    pregenerated_data: str
    student_model: str
    cache_dir: str
    teacher_model: str | None = None
    mlm_loss: bool = False
    further_train: bool = False
    super_model: str | None = None  # slicing scheme asked for explicitly (--super_model / --kd)
    epochs: int = 2
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    max_seq_length: int = 512
    masked_lm_prob: float = 0.0
    max_predictions_per_seq: int = 77
    do_lower_case: bool = False
    fp16: bool = False
    bf16: bool = False
    loss_scale: float = 0.0
    warmup_steps: int | None = None
    warmup_proportion: float | None = None
    seed: int = 42
    optimizer: str = "bertadam"
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    logging_steps: int = 500
    save_steps: int = 0
    max_steps: int = 0
    resume: str | None = None
    overwrite_output_dir: bool = False
    sample_times_per_batch: int = 1
    sandwich: bool = False
    layer_num_space: tuple[int, int] | None = None
    hidden_size_space: tuple[int, int] | None = None
    qkv_size_space: tuple[int, int] | None = None
    intermediate_size_space: tuple[int, int] | None = None
    head_num_space: tuple[int, int] | None = None
    hidden_step: int = 4
    ffn_step: int = 4
    qkv_step: int | None = None
    original_input_order: bool = False
    original_masking: bool = False
    num_workers: int = 2
    debug: bool = False
    debug_limit: int = 20000
    no_cuda: bool = False
    threads: int | None = None
    progress: bool = True

    @property
    def objective(self) -> str:
        return "mlm" if self.mlm_loss else "kd"

    @property
    def micro_batch_size(self) -> int:
        return self.train_batch_size // self.gradient_accumulation_steps


def save_name(cfg: PretrainConfig, world_size: int) -> str:
    """The original's run name (built from the per-GPU batch before the GAS division)."""
    return (f"superbert_epoch_{cfg.epochs}_lr_{cfg.learning_rate}_bsz_{cfg.train_batch_size}"
            f"_grad_accu_{cfg.gradient_accumulation_steps}_{cfg.max_seq_length}"
            f"_gpu_{world_size}")


def run_dirs(cfg: PretrainConfig, world_size: int) -> tuple[Path, Path]:
    """(checkpoint dir, TensorBoard dir) under --cache_dir, as the original's layout."""
    root = Path(cfg.cache_dir) / "output" / "superbert"
    name = save_name(cfg, world_size)
    return root / "checkpoints" / name, root / "tensorboard" / name


def check_config(cfg: PretrainConfig) -> None:
    """Flag combinations that cannot work; raised before anything is read or written."""
    def positive(name: str, value: float) -> None:
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")

    for name in ("epochs", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "max_seq_length", "sample_times_per_batch", "logging_steps"):
        positive(name, getattr(cfg, name))
    if cfg.train_batch_size % cfg.gradient_accumulation_steps:
        raise UserError(f"--train_batch_size {cfg.train_batch_size} is not divisible by "
                        f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps} (the "
                        f"batch per optimizer step is split into equal micro-batches)")
    if not 0 <= cfg.masked_lm_prob <= 1:
        raise UserError(f"--masked_lm_prob must be in [0, 1], got {cfg.masked_lm_prob}")
    if cfg.mlm_loss and cfg.masked_lm_prob == 0 and not cfg.original_masking:
        raise UserError("--mlm_loss with --masked_lm_prob 0 masks nothing to predict; pass "
                        "--masked_lm_prob 0.15 (as the README)")
    if cfg.max_predictions_per_seq < 0:
        raise UserError("--max_predictions_per_seq must be >= 0")
    if cfg.fp16 and cfg.bf16:
        raise UserError("--fp16 and --bf16 exclude each other")
    if cfg.save_steps < 0 or cfg.max_steps < 0:
        raise UserError("--save_steps and --max_steps must be >= 0")
    if cfg.adam_epsilon < 0 or cfg.weight_decay < 0:
        raise UserError("--adam_epsilon and --weight_decay must be >= 0")
    if cfg.num_workers < 0:
        raise UserError("--num_workers must be >= 0")
    if cfg.optimizer not in ("bertadam", "adamw"):
        raise UserError(f"--optimizer must be bertadam or adamw, got {cfg.optimizer!r}")
    if cfg.super_model is not None and cfg.super_model != cfg.objective and not cfg.further_train:
        raise UserError(f"--super_model {cfg.super_model.upper()} contradicts the objective: a "
                        f"{cfg.super_model.upper()} supernet is trained "
                        f"{'with --mlm_loss' if cfg.super_model == 'mlm' else 'by distillation (no --mlm_loss)'}")
    if cfg.objective == "kd" and not cfg.teacher_model:
        raise UserError("knowledge distillation (no --mlm_loss) needs --teacher_model")
    space_flags = {"--layer_num_space": cfg.layer_num_space, "--hidden_size_space": cfg.hidden_size_space,
                   "--qkv_size_space": cfg.qkv_size_space,
                   "--intermediate_size_space": cfg.intermediate_size_space,
                   "--head_num_space": cfg.head_num_space}
    given = [k for k, v in space_flags.items() if v is not None]
    if cfg.further_train and (given or cfg.sandwich or cfg.sample_times_per_batch > 1):
        extra = given + (["--sandwich"] if cfg.sandwich else []) + (
            ["--sample_times_per_batch"] if cfg.sample_times_per_batch > 1 else [])
        raise UserError(f"--further_train trains the model at its own fixed arch; "
                        f"{', '.join(extra)} do not apply")
    for flag, value in space_flags.items():
        if value is not None and (len(value) != 2):
            raise UserError(f"{flag} takes two values (min max), got {list(value)}")


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


# ---- checkpoints -------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """List every file with size and sha256; written last, it marks the checkpoint complete."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != CHECKPOINT_MANIFEST:
            rel = str(p.relative_to(directory))
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    data = {**info, "files": files, "complete": True}
    (directory / CHECKPOINT_MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """The manifest of a complete, intact checkpoint; UserError naming what is wrong."""
    manifest = directory / CHECKPOINT_MANIFEST
    if not directory.is_dir():
        raise UserError(f"checkpoint not found: {directory}")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory} is not a complete checkpoint (no {CHECKPOINT_MANIFEST}: "
                        f"the run was killed while writing it, or it is not a checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{manifest} is damaged") from None
    if not info.get("complete") or not isinstance(info.get("files"), dict):
        raise UserError(f"{manifest} does not describe a complete checkpoint")
    for rel, meta in info["files"].items():
        path = directory / rel
        if not path.is_file():
            raise UserError(f"checkpoint {directory} is damaged: {rel} is missing")
        size = path.stat().st_size
        if size != meta["size"]:
            raise UserError(f"checkpoint {directory} is damaged: {rel} has {size} bytes, "
                            f"expected {meta['size']} (truncated?)")
        if _sha256(path) != meta["sha256"]:
            raise UserError(f"checkpoint {directory} is damaged: {rel} fails its sha256 check")
    return info


def find_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run (epoch_* and step_*), newest step last."""
    found = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.is_dir() and (p.name.startswith("epoch_") or p.name.startswith("step_")):
                found.append(p)
    def key(p: Path) -> tuple[int, int]:
        try:
            info = json.loads((p / CHECKPOINT_MANIFEST).read_text())
            return int(info.get("global_step", -1)), int(p.name.startswith("epoch_"))
        except (OSError, ValueError):
            return -1, 0
    return sorted(found, key=key)


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    for p in reversed(find_checkpoints(run_dir)):
        try:
            verify_checkpoint(p)
            return p
        except UserError as err:
            logger.warning("skipping checkpoint: %s", err)
    return None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


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

    def __init__(self, model: nn.Module, kind: str, original_input_order: bool, teacher=None):
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
        from .distill import kd_counts

        mask = batch["attention_mask"]
        masked = int((batch["labels"] != -100).sum()) if "labels" in batch else 0
        tokens = int(mask.sum())
        if self.kind == "kd":
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
        if self.kind == "kd":
            from .distill import kd_loss_sums

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
        import torch.distributed as dist

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
        # its gradient into the next epoch's first step).
        self.steps_per_epoch = micro_per_epoch // cfg.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise UserError(f"the data ({len(self.dataset)} sequences over {env.world_size} "
                            f"rank(s)) does not fill one optimizer step of "
                            f"{cfg.train_batch_size} sequences per rank")
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

    # ---- checkpoints ----
    def checkpoint_info(self) -> dict[str, Any]:
        cfg = self.cfg
        keys = ("mlm_loss", "further_train", "train_batch_size", "gradient_accumulation_steps",
                "max_seq_length", "epochs", "learning_rate", "seed", "optimizer",
                "sample_times_per_batch", "sandwich", "masked_lm_prob", "original_masking",
                "original_input_order", "fp16", "bf16")
        return {"global_step": self.state.global_step, "epoch": self.state.epoch,
                "micro_in_epoch": self.state.micro_in_epoch, "world_size": self.env.world_size,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "run": {k: getattr(cfg, k) for k in keys}}

    def save_checkpoint(self, name: str) -> Path | None:
        """Write `run_dir/name` atomically: model dir (save_model), optimizer.pt, trainer
        state with every rank's RNG, and the manifest last."""
        from .hf import save_model

        rngs = all_gather_object(self.env, rng_state())
        if not self.env.is_main:
            barrier(self.env)
            return None
        target = self.run_dir / name
        info = self.checkpoint_info()
        with atomic_path(target) as tmp:
            save_model(self.model, tmp, self.vocab_source, do_lower_case=self.cfg.do_lower_case)
            torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            torch.save({"info": info, "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler else None,
                        "rng": rngs, "sample_config": dataclasses.asdict(self.model.active_sample())},
                       tmp / TRAINER_STATE)
            write_manifest(tmp, info)
        logger.info("saved checkpoint %s (step %d)", target, self.state.global_step)
        barrier(self.env)
        return target

    def load_checkpoint(self, directory: Path) -> None:
        from .hf import normalize_keys, read_state_dict

        info = verify_checkpoint(directory)
        mine = self.checkpoint_info()
        if info.get("world_size") != self.env.world_size:
            raise UserError(f"checkpoint {directory} was written by {info.get('world_size')} "
                            f"process(es); resume with the same number (now {self.env.world_size})")
        for key, value in mine["run"].items():
            if info["run"].get(key) != value:
                raise UserError(f"checkpoint {directory} was trained with {key}="
                                f"{info['run'].get(key)!r}, this run has {value!r}")
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
        try:
            opt = torch.load(directory / OPTIMIZER_FILE, map_location=self.device, weights_only=False)
            self.optimizer.load_state_dict(opt)
            trainer = torch.load(directory / TRAINER_STATE, map_location="cpu", weights_only=False)
        except Exception as err:  # verified sizes and hashes, so this is a format mismatch
            raise UserError(f"cannot load the optimizer/trainer state of {directory}: {err}") from None
        self.scheduler.load_state_dict(trainer["scheduler"])
        if self.scaler is not None and trainer.get("scaler"):
            self.scaler.load_state_dict(trainer["scaler"])
        set_rng_state(trainer["rng"][self.env.rank])
        self.state = TrainState(int(info["global_step"]), int(info["epoch"]),
                                int(info["micro_in_epoch"]))
        logger.info("resumed from %s: step %d, epoch %d, %d micro-batches into it", directory,
                    self.state.global_step, self.state.epoch, self.state.micro_in_epoch)

    # ---- logging ----
    def _open_tensorboard(self) -> None:
        if not self.env.is_main or self.tb_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: scalars only in the log
            logger.info("tensorboard is not installed: no TensorBoard scalars")
            return
        self.writer = SummaryWriter(str(self.tb_dir))

    def _log(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            for key in ("loss", "rep_loss", "att_loss", "lr", "tokens_per_s"):
                if key in record:
                    self.writer.add_scalar(key, record[key], record["step"])
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
                   ) -> tuple[dict[str, torch.Tensor], StepCounts]:
        """Forward/backward the step's micro-batches for each arch; returns summed loss terms."""
        cfg = self.cfg
        local = torch.tensor([self.objective.counts(b, self.fit_size, self.heads) for b in batches],
                             dtype=torch.int64).sum(0)
        glob = all_reduce_sum(self.env, local.to(self.device)).tolist()
        counts = StepCounts(*map(int, glob))
        terms: dict[str, torch.Tensor] = {}
        if self.objective.kind == "mlm" and counts.masked == 0:
            logger.warning("step %d: no masked token in the whole batch; step skipped",
                           self.state.global_step)
            return terms, counts
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
                distil = cfg.sandwich and i > 0 and self.objective.kind == "mlm"
                with self._autocast():
                    loss, parts, logits = self.objective(
                        batch, counts, teacher_out,
                        soft_targets=soft if distil else None,
                        want_logits=cfg.sandwich and i == 0 and self.objective.kind == "mlm",
                        n_local=n_masked)
                if logits is not None and i == 0:
                    soft = logits.detach().softmax(-1)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0) + v.float()
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
        return terms, counts

    def train(self) -> TrainState:
        cfg, env = self.cfg, self.env
        gas = cfg.gradient_accumulation_steps
        self._open_tensorboard()
        if env.is_main:
            logger.info("%d sequences, %d rank(s), %d per rank per step (%d x %d micro-batches); "
                        "%d optimizer steps per epoch, %d in all; warm-up %d (%s); %s",
                        len(self.dataset), env.world_size, cfg.train_batch_size, gas,
                        cfg.micro_batch_size, self.steps_per_epoch, self.total_steps,
                        self.warmup_steps, self.warmup_how,
                        f"fixed arch {self.fixed_arch.short()}" if self.fixed_arch else
                        f"{self.space.scheme.upper()} space of {self.space.size():,} archs")
        bar = None
        if env.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.state.global_step, unit="step",
                       dynamic_ncols=True, desc="pre-training")
        window = {"terms": {}, "steps": 0, "tokens": 0, "wait": 0.0, "start": time.perf_counter()}
        self.model.train()
        stop = False
        while self.state.epoch < cfg.epochs and not stop:
            epoch = self.state.epoch
            skip = self.state.micro_in_epoch
            self.sampler.set_epoch(epoch, start=skip * cfg.micro_batch_size)
            if hasattr(self.collator, "set_epoch"):
                self.collator.set_epoch(epoch)
            it = iter(self.loader)
            for _ in range(skip // gas, self.steps_per_epoch):
                t0 = time.perf_counter()
                batches = [next(it) for _ in range(gas)]
                window["wait"] += time.perf_counter() - t0
                archs = step_archs(self.space, self.fixed_arch, self.state.global_step, cfg)
                terms, counts = self.train_step(batches, archs)
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.global_step += 1
                self.state.micro_in_epoch += gas
                for k, v in terms.items():
                    window["terms"][k] = window["terms"].get(k, 0) + v
                window["steps"] += 1
                window["tokens"] += counts.tokens
                step = self.state.global_step
                if step % cfg.logging_steps == 0 or step == self.total_steps:
                    self._log_window(window, archs, bar)
                if bar is not None:
                    bar.update(1)
                if cfg.save_steps and step % cfg.save_steps == 0 and self.run_dir is not None:
                    self.save_checkpoint(f"step_{step}")
                if cfg.max_steps and step >= cfg.max_steps:
                    stop = True
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
        if self.writer is not None:
            self.writer.close()
        return self.state

    def _log_window(self, window: dict[str, Any], archs: list[Arch], bar) -> None:
        names = sorted(window["terms"])
        local = torch.stack([window["terms"][k] for k in names]) if names else torch.zeros(0)
        values = all_reduce_sum(self.env, local.to(self.device)).tolist() if names else []
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
        window.update(terms={}, steps=0, tokens=0, wait=0.0, start=time.perf_counter())


# ---- building a run from its config ------------------------------------------------------------
def read_vocab(vocab_file: Path) -> list[str]:
    try:
        return vocab_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"vocab file not found: {vocab_file}") from None
    except UnicodeDecodeError:
        raise UserError(f"{vocab_file} is not UTF-8") from None


def build_student(cfg: PretrainConfig, model_dir: Path, teacher_width: int | None):
    """(model, fixed arch or None, search space or None) as the flags say."""
    from .hf import load_config, load_model
    from .modeling import AutoTinyBertForMaskedLM

    if cfg.further_train:
        config = load_config(model_dir, cfg.super_model)
        overrides = {}
        if teacher_width is not None:
            if config.fit_size is not None and config.fit_size != teacher_width:
                raise UserError(f"{model_dir}: its dense_fit projects to {config.fit_size}, the "
                                f"teacher is {teacher_width} wide; use the teacher it was "
                                f"distilled from")
            if config.fit_size is None:
                logger.warning("%s has no dense_fit: a fresh projection to the teacher width "
                               "%d is initialised", model_dir, teacher_width)
                overrides["fit_size"] = teacher_width
        model = load_model(model_dir, AutoTinyBertForMaskedLM, cfg.super_model, **overrides)
        model.train()
        fixed = arch_of_config(model.config)
        return model, fixed, None
    config = load_config(model_dir)
    scheme = cfg.super_model or cfg.objective
    saved = config.attention_scheme
    if saved != scheme:
        logger.warning("%s records the %s attention scheme; this run trains from scratch with "
                       "the %s scheme (recorded in its checkpoints)", model_dir, saved.upper(),
                       scheme.upper())
    config.attention_scheme = scheme
    config.fit_size = teacher_width
    space = SearchSpace.for_supernet(
        config, scheme, layers=cfg.layer_num_space, hidden=cfg.hidden_size_space,
        qkv=cfg.qkv_size_space, ffn=cfg.intermediate_size_space, heads=cfg.head_num_space,
        hidden_step=cfg.hidden_step, ffn_step=cfg.ffn_step, qkv_step=cfg.qkv_step)
    if scheme == "kd" and cfg.head_num_space is not None:
        raise UserError("--head_num_space applies to the MLM scheme; a KD supernet keeps all "
                        f"{config.num_attention_heads} heads and varies --qkv_size_space")
    if scheme == "mlm" and cfg.qkv_size_space is not None:
        raise UserError("--qkv_size_space applies to the KD scheme; in the MLM scheme qkv is "
                        f"{config.qkv_size // config.num_attention_heads} x heads "
                        f"(--head_num_space)")
    space.validate_against(config)
    validate_arch(space.smallest(), config, scheme)
    model = AutoTinyBertForMaskedLM(config)
    model.train()
    return model, None, space


def run_pretraining(cfg: PretrainConfig, env: DistEnv) -> TrainState:
    """Check everything, build model/teacher/data, then train; what pre_training.py calls."""
    from . import data as data_mod
    from .hf import resolve_model_dir

    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # -- inputs (all checks before anything is written) --
    student_dir = resolve_model_dir(cfg.student_model, need_weights=cfg.further_train)
    vocab_file = student_dir / "vocab.txt"
    vocab = read_vocab(vocab_file)
    specials = {t: i for i, t in enumerate(vocab) if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    for t in ("[PAD]", "[MASK]"):
        if t not in specials:
            raise UserError(f"{vocab_file} has no {t} token")
    teacher = None
    if cfg.objective == "kd":
        from .distill import load_teacher

        teacher = load_teacher(cfg.teacher_model, env.device)
        if teacher.encoder.config.vocab_size != len(vocab):
            raise UserError(f"teacher vocab_size {teacher.encoder.config.vocab_size} differs "
                            f"from the student's {len(vocab)}-token vocab")
    elif cfg.teacher_model:
        logger.warning("--teacher_model %s is not used: --mlm_loss trains without a teacher",
                       cfg.teacher_model)
    set_seed(cfg.seed)
    model, fixed, space = build_student(cfg, student_dir, teacher.hidden_size if teacher else None)
    if cfg.max_seq_length > model.config.max_position_embeddings:
        raise UserError(f"--max_seq_length {cfg.max_seq_length} exceeds the model's "
                        f"{model.config.max_position_embeddings} position embeddings")
    if model.config.vocab_size < len(vocab):
        raise UserError(f"{vocab_file} has {len(vocab)} tokens, more than the model's "
                        f"vocab_size {model.config.vocab_size}")
    if teacher is not None:
        heads = fixed.heads if fixed else (space.kd_heads if space.scheme == "kd" else None)
        if heads != teacher.num_heads:
            raise UserError(f"the student keeps {heads} attention heads but the teacher has "
                            f"{teacher.num_heads}; the attention loss matches them one to one")
    dataset = data_mod.PretrainingDataset(cfg.pregenerated_data, cfg.max_seq_length,
                                          vocab_file=str(vocab_file),
                                          debug_limit=cfg.debug_limit if cfg.debug else None)
    if len(dataset) == 0:
        raise UserError(f"{cfg.pregenerated_data} holds no training sequences")
    lower = (getattr(dataset, "metadata", None) or {}).get("do_lower_case")
    if lower is not None and bool(lower) != cfg.do_lower_case:
        raise UserError(f"{cfg.pregenerated_data} was tokenised with do_lower_case={bool(lower)}; "
                        f"{'pass' if lower else 'drop'} --do_lower_case so the saved tokenizer "
                        f"matches the data")
    collator = data_mod.MaskingCollator(
        vocab_size=len(vocab), mask_token_id=specials["[MASK]"], pad_token_id=specials["[PAD]"],
        special_token_ids=sorted(specials.values()), max_seq_length=cfg.max_seq_length,
        masked_lm_prob=cfg.masked_lm_prob, max_predictions_per_seq=cfg.max_predictions_per_seq,
        seed=cfg.seed, original_masking=cfg.original_masking)
    run_dir, tb_dir = run_dirs(cfg, env.world_size)
    resume_from = None
    if cfg.resume:
        if cfg.resume == "auto":
            resume_from = latest_valid_checkpoint(run_dir)
            if resume_from is None:
                logger.info("--resume auto: no complete checkpoint in %s, starting fresh", run_dir)
        else:
            resume_from = Path(cfg.resume)
            verify_checkpoint(resume_from)
    elif find_checkpoints(run_dir) and not cfg.overwrite_output_dir:
        raise UserError(f"{run_dir} already holds checkpoints: pass --resume auto to continue, "
                        f"--overwrite_output_dir to start over, or another --cache_dir")
    # -- outputs: rank 0 creates, the others wait --
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tb_dir.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite_output_dir and not cfg.resume:
            # Starting over: old checkpoints must not be picked up by a later --resume auto.
            for old in find_checkpoints(run_dir):
                shutil.rmtree(old)
            (run_dir / LOG_FILE).unlink(missing_ok=True)
    barrier(env)
    # A different seed per rank for dropout; the model itself was built identically.
    torch.manual_seed(cfg.seed + env.rank)
    model.to(env.device)  # NCCL broadcasts device tensors
    broadcast_parameters(env, model)
    trainer = Trainer(cfg, env, model, dataset, collator, space, fixed, student_dir,
                      teacher=teacher, run_dir=run_dir, tb_dir=tb_dir)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    return trainer.train()
