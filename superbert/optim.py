"""The optimiser and learning-rate schedule shared by pre-training and fine-tuning: the
original's BertAdam, its weight-decay rule, and linear warm-up then decay."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from .errors import UserError

logger = logging.getLogger(__name__)


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
