"""Fine-tuning one arch on one task for one seed (`finetune`): the training loop, the evaluations
every `eval_step` steps and after the last, and the best of them."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ..arch import Arch
from ..cli import progress_seconds
from ..modeling import AutoTinyBertPreTrainedModel
from ..optim import BertAdam
from ..progress import Progress, Tick, duration
from ..tasks import is_squad
from ..tasks.metrics import best_key
from .evaluation import EvalOutcome, autocast, evaluate
from .features import TaskData, batch_of
from .model import inherit
from .steps import StepPlan, make_schedule, plan_steps

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    best: float | None
    em: float | None
    infer_ms: float
    infer_cnt: int
    global_step: int
    history: list[dict[str, float]]
    best_predictions: tuple | None = None
    best_model: AutoTinyBertPreTrainedModel | None = None
    final_mm: dict[str, float] | None = None

    @property
    def time_per_batch_infer_ms(self) -> float:
        return self.infer_ms / self.infer_cnt if self.infer_cnt else 0.0


def train_steps(model: AutoTinyBertPreTrainedModel, data: TaskData, plan: StepPlan,
                optimizer: BertAdam, scheduler: torch.optim.lr_scheduler.LambdaLR,
                order: torch.Generator, device: torch.device, fp16: bool,
                progress: Progress, line: LossLine) -> Iterator[tuple[int, float]]:
    """The training loop. Yields `(step, mean training loss so far)` after every optimizer
    step at which the dev set is due (every `eval_step` steps, and the last step)."""
    cfg = data.cfg
    gas = plan.gas
    n = len(data.train)
    scaler = torch.amp.GradScaler("cuda", enabled=fp16 and device.type == "cuda")
    loss_sum, loss_steps = torch.zeros((), device=device), 0  # summed on the device: no sync
    line.mean_loss = lambda: float(loss_sum) / max(loss_steps, 1)  # read only for a line
    model.train()
    optimizer.zero_grad(set_to_none=True)
    step = micro = 0
    while step < plan.t_total:
        perm = torch.randperm(n, generator=order)
        for b in range(plan.micro_per_epoch):
            index = perm[b * plan.micro_batch_size:(b + 1) * plan.micro_batch_size]
            batch = batch_of(data.train, index, device, with_labels=True)
            with autocast(device, fp16):
                loss = model(**batch).loss
            scaler.scale(loss / gas).backward()
            loss_sum += loss.detach().float()
            loss_steps += 1
            micro += 1
            if micro % gas:
                continue
            scaler.step(optimizer)  # unscales first; BertAdam clips each tensor itself
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update()
            if step % cfg.eval_step == 0 or step == plan.t_total:
                yield step, float(loss_sum) / max(loss_steps, 1)
            if step >= plan.t_total:
                break


# Without a terminal (a cluster job's log): a progress line this often, at most.
PROGRESS_SECONDS = 10.0


@dataclass
class LossLine:
    """A fine-tuning's progress line: the job, the step, the running training loss, the ETA."""

    label: str
    mean_loss: Callable[[], float] = lambda: math.nan

    def __call__(self, tick: Tick) -> str:
        return (f"{self.label}: step {tick.done}/{tick.total} loss {self.mean_loss():.4f} "
                f"ETA {duration(tick.eta)}")


@dataclass
class _Best:
    """The best evaluation so far (and, if kept, the weights that made it)."""

    score: float = -math.inf
    state: dict[str, torch.Tensor] | None = None


def record_evaluation(result: FinetuneResult, best: _Best, outcome: EvalOutcome, step: int,
                      train_loss: float, task: str, model: AutoTinyBertPreTrainedModel,
                      keep_best_model: bool) -> dict[str, Any]:
    """Add one dev evaluation to `result`, keep it if it beats the best so far, and return the
    record written to eval_results.txt."""
    result.infer_ms += outcome.infer_ms
    result.infer_cnt += outcome.infer_batches
    record = {**outcome.metrics, "global_step": step, "loss": train_loss,
              "cls_loss": train_loss, "infer_cnt": result.infer_cnt,
              "infer_time": result.infer_ms}
    result.history.append(record)
    if outcome.score > best.score:
        best.score = outcome.score
        if is_squad(task):
            result.best, result.em = outcome.metrics["f1"], outcome.metrics["em"]
        else:
            result.best = outcome.metrics[best_key(task)]
        result.best_predictions = outcome.predictions
        if keep_best_model:
            best.state = {k: v.detach().to("cpu", copy=True)
                          for k, v in model.state_dict().items()}
    return record


def finetune(supernet: AutoTinyBertPreTrainedModel, arch: Arch, data: TaskData, seed: int,
             device: torch.device, fp16: bool = False, keep_best_model: bool = False,
             on_eval: Callable[[dict[str, Any], EvalOutcome], None] | None = None,
             progress: bool = True, label: str = "") -> FinetuneResult:
    """Fine-tune the sub-model `arch` inherited from `supernet` on `data`, evaluating every
    `eval_step` optimizer steps and after the last one; returns the best dev score."""
    task = data.task
    model = inherit(supernet, arch, seed, device)
    torch.manual_seed(seed)  # dropout
    order = torch.Generator().manual_seed(seed)  # data order
    plan = plan_steps(data.cfg, len(data.train))
    optimizer, scheduler = make_schedule(model, data.cfg, plan, device)

    result = FinetuneResult(None, None, 0.0, 0, 0, [])
    best = _Best()
    line = LossLine(label or f"{task} {arch.short()}")
    # A bar on a terminal; off one, a line every PROGRESS_SECONDS; nothing with --no_progress.
    bar = Progress(plan.t_total, line.label, seconds=progress_seconds(PROGRESS_SECONDS),
                   enabled=progress, line=line, logger=logger, leave=False)
    for step, train_loss in train_steps(model, data, plan, optimizer, scheduler, order, device,
                                        fp16, bar, line):
        outcome = evaluate(model, data, data.dev, task, device, fp16, data.dev_examples)
        if not (math.isfinite(train_loss) and math.isfinite(outcome.score)):
            logger.warning("%s: training loss %s, dev score %s at step %d: the fine-tuning "
                           "diverged; a non-finite score never counts as the best", line.label,
                           train_loss, outcome.score, step)
        record = record_evaluation(result, best, outcome, step, train_loss, task, model,
                                   keep_best_model)
        if on_eval is not None:
            on_eval(record, outcome)
        bar.set_postfix(score=f"{outcome.score:.4g}")
        result.global_step = step
    bar.close()
    if data.dev_mm is not None:
        # The original scores MNLI-mismatched once, with the final model.
        result.final_mm = evaluate(model, data, data.dev_mm, "mnli-mm", device, fp16).metrics
    if keep_best_model and best.state is not None:
        model.load_state_dict(best.state)
        result.best_model = model.cpu()
    return result
