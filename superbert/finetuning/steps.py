"""How many micro-batches and optimizer steps one fine-tuning runs (`plan_steps`), and its BertAdam
optimizer with the original's warm-up-linear schedule (`make_schedule`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..optim import BertAdam, make_optimizer, warmup_linear
from ..tasks import is_squad
from .config import TaskConfig

logger = logging.getLogger(__name__)


BERT_ADAM_EPS = 1e-6  # BertAdam's own default, which the original evaluator used

@dataclass(frozen=True)
class StepPlan:
    """How many micro-batches and optimizer steps one fine-tuning runs."""

    micro_batch_size: int   # train_batch_size / gradient_accumulation_steps
    micro_per_epoch: int    # partial last batches are skipped, as the original
    t_total: int            # optimizer steps (--max_steps, else epochs x steps per epoch)
    warmup: int             # warm-up steps of the schedule
    gas: int = 1            # micro-batches per optimizer step


def plan_steps(cfg: TaskConfig, n_train: int) -> StepPlan:
    """Count the run's steps over `n_train` training features (SQuAD: windows). A set smaller
    than one optimizer step's batch is one partial batch per step (said in one log line): a
    proxy run on a few examples still trains, rather than failing."""
    what = "windows" if is_squad(cfg.task) else "examples"
    if n_train == 0:
        raise UserError(f"{cfg.task}: no training {what}")
    gas = cfg.gradient_accumulation_steps
    micro_bs = cfg.train_batch_size // gas
    micro_per_epoch = n_train // micro_bs
    steps_per_epoch = micro_per_epoch // gas
    if steps_per_epoch == 0:
        logger.warning("%s: the %d training %s do not fill one batch of %d: each epoch is one "
                       "partial batch of %d", cfg.task, n_train, what, cfg.train_batch_size,
                       n_train)
        micro_bs, micro_per_epoch, gas, steps_per_epoch = n_train, 1, 1, 1
    t_total = cfg.max_steps or max(1, int(steps_per_epoch * cfg.num_train_epochs))
    return StepPlan(micro_bs, micro_per_epoch, t_total, int(cfg.warmup_proportion * t_total), gas)


def make_schedule(model: torch.nn.Module, cfg: TaskConfig, plan: StepPlan,
                  device: torch.device) -> tuple[BertAdam, torch.optim.lr_scheduler.LambdaLR]:
    """The original evaluator's BertAdam (per-tensor clipping at 1.0) under its warm-up-linear
    schedule."""
    optimizer = make_optimizer(model, "bertadam", cfg.learning_rate, BERT_ADAM_EPS,
                               cfg.weight_decay, max_grad_norm=1.0, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_linear(s, plan.t_total, plan.warmup))
    return optimizer, scheduler
