"""Scoring a model on a dev set: one timed forward pass, then the GLUE metric or the SQuAD
answers and scores (`evaluate`); the same path for torch and ONNX Runtime models."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..modeling import AutoTinyBertPreTrainedModel
from ..tasks import is_squad, squad
from ..tasks.metrics import best_key, glue_metrics, squad_v1_evaluate, squad_v2_evaluate
from .config import TaskConfig
from .features import TaskData, batch_of


@dataclass
class EvalOutcome:
    """The scores of one evaluation, plus what was timed."""

    metrics: dict[str, float]
    score: float            # what "best" ranks (GLUE: the task's metric; SQuAD: f1 + em)
    infer_ms: float
    infer_batches: int
    predictions: tuple | None = None  # SQuAD: (predictions, nbest, null_odds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, fp16: bool):
    if fp16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class DevPass:
    """The raw outputs of one pass over a dev set, and the time its forwards took."""

    outputs: list[tuple[np.ndarray, ...]]  # per batch: (logits,) or (start, end logits)
    loss_sum: float                        # GLUE: summed example losses
    infer_s: float
    batches: int


@torch.no_grad()
def forward_dev(model: AutoTinyBertPreTrainedModel, features: Any, qa: bool, batch_size: int,
                 device: torch.device, fp16: bool) -> DevPass:
    """Run `features` through the model in eval mode; timing covers the forwards only."""
    was_training = model.training
    model.eval()
    n = len(features)
    dev = DevPass([], 0.0, 0.0, 0)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(start + batch_size, n))
        batch = batch_of(features, index, device, with_labels=not qa)
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, fp16):
            out = model(**batch)
        _sync(device)
        dev.infer_s += time.perf_counter() - t0
        dev.batches += 1
        if qa:
            dev.outputs.append((out.start_logits.float().cpu().numpy(),
                                out.end_logits.float().cpu().numpy()))
        else:
            dev.loss_sum += float(out.loss) * len(index)
            dev.outputs.append((out.logits.float().cpu().numpy(),))
    model.train(was_training)
    return dev


def _squad_scores(cfg: TaskConfig, dev: DevPass, features: Any, examples: list
                  ) -> tuple[dict[str, float], tuple]:
    """Decoded answers and the official SQuAD metrics (f1, em, and v2's extra keys)."""
    # Windows of one batch share a length; pad every batch to the longest so rows align.
    T = max(o[0].shape[1] for o in dev.outputs)
    pad = lambda a: np.pad(a, ((0, 0), (0, T - a.shape[1])), constant_values=-1e4)  # noqa: E731
    starts = np.concatenate([pad(o[0]) for o in dev.outputs])
    ends = np.concatenate([pad(o[1]) for o in dev.outputs])
    preds, nbest, odds = squad.decode_predictions(
        examples, features, starts, ends, cfg.n_best_size, cfg.max_answer_length,
        cfg.version_2, cfg.null_score_diff_threshold)
    gold = squad.gold_answers(examples)
    if cfg.version_2:
        raw = squad_v2_evaluate(gold, preds)
        metrics = {"f1": raw["f1"], "em": raw["exact"],
                   **{k: v for k, v in raw.items() if k not in ("f1", "exact", "total")}}
    else:
        raw = squad_v1_evaluate(gold, preds)
        metrics = {"f1": raw["f1"], "em": raw["exact_match"]}
    return metrics, (preds, nbest, odds)


def glue_scores(task: str, num_labels: int, dev: DevPass, features: Any) -> dict[str, float]:
    logits = np.concatenate([o[0] for o in dev.outputs])
    preds = logits.reshape(-1) if num_labels == 1 else logits.argmax(axis=1)
    metrics = glue_metrics(task, preds, features.labels.numpy())
    metrics["eval_loss"] = dev.loss_sum / max(len(features), 1)
    return metrics


def evaluate(model: AutoTinyBertPreTrainedModel, data: TaskData, features: Any, task: str,
             device: torch.device, fp16: bool = False, examples: list | None = None) -> EvalOutcome:
    """Score `features` (a dev set of `task`); timing covers the forward passes only."""
    qa = is_squad(task)
    dev = forward_dev(model, features, qa, data.cfg.eval_batch_size, device, fp16)
    if qa:
        metrics, predictions = _squad_scores(data.cfg, dev, features, examples)
        return EvalOutcome(metrics, metrics["f1"] + metrics["em"], 1000 * dev.infer_s,
                           dev.batches, predictions)
    metrics = glue_scores(task, data.num_labels, dev, features)
    return EvalOutcome(metrics, metrics[best_key(task)], 1000 * dev.infer_s, dev.batches)
