"""A fine-tuned model scored as deployed (--onnx): exported to ONNX (and INT8), its dev set run
through ONNX Runtime with the evaluator's own `evaluate`, one results block per runtime."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..arch import arch_of_config
from ..errors import UserError
from ..hf import load_config, resolve_model_dir
from ..jobs import locked_append, shared_lock
from ..results import TaskResult, format_results_block, read_results
from ..tasks import is_squad
from ..tasks.metrics import best_key
from .config import RunConfig
from .evaluation import EvalOutcome, evaluate
from .setup import (EVAL_RESULTS_FILE, RESULTS_FILE, check_sequence_lengths, format_kv,
                    load_all_task_data, param_count)

logger = logging.getLogger(__name__)


def run_exported(cfg: RunConfig) -> list[TaskResult]:
    """Score a fine-tuned model (a --save_best_model directory) as deployed: export it with its
    task head to ONNX (and INT8 with --int8), run the dev set through ONNX Runtime with the same
    `evaluate` as fine-tuning uses, and append one block per runtime (`runtime = ...`). The
    torch model's score on the same dev set is logged beside them."""
    from .. import deploy  # onnx and onnxruntime are optional: imported only here

    deploy.require_onnx()
    model_dir = resolve_model_dir(cfg.model, need_weights=True)
    head = deploy.Head.of_model_dir(model_dir)
    task_cfg = cfg.tasks[0]
    task = task_cfg.task
    if head is deploy.Head.ENCODER:
        raise UserError(f"{model_dir} holds no task head (an extracted or pre-trained model): "
                        f"--onnx scores a fine-tuned model saved with --save_best_model")
    if (head is deploy.Head.QUESTION_ANSWERING) != is_squad(task):
        raise UserError(f"{model_dir} holds a {head.value} model, which cannot be scored on "
                        f"{task}")
    config = load_config(model_dir)
    check_sequence_lengths(cfg.tasks, config)
    data = load_all_task_data(cfg, model_dir)[0]
    if not is_squad(task) and config.num_labels != data.num_labels:
        raise UserError(f"{model_dir} has {config.num_labels} labels but {task} has "
                        f"{data.num_labels}")
    out_dir = Path(cfg.output_dir)
    results_file = out_dir / RESULTS_FILE
    if results_file.exists():
        with shared_lock(results_file):
            tuned = [b for b in read_results(results_file) if b.runtime is None]
        if tuned:
            raise UserError(f"{results_file} holds fine-tuning results (line {tuned[0].line}); "
                            f"give --onnx its own --output_dir, or Evolved would average the "
                            f"deployed scores into the archs' fitness")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = deploy.export_onnx(model_dir, out_dir / f"{model_dir.name}.onnx", head=head,
                               opset=cfg.opset, int8=cfg.int8)
    arch = arch_of_config(config)
    cpu = torch.device("cpu")
    reference = evaluate(deploy.load_for_export(model_dir, head), data, data.dev, task, cpu,
                         examples=data.dev_examples)
    shown = [f"torch {_metric_text(reference, task)}"]
    results = []
    runs = [("onnxruntime-fp32", files.fp32)] + ([("onnxruntime-int8", files.int8)]
                                                if files.int8 is not None else [])
    for runtime, path in runs:
        model = deploy.OrtTaskModel(path, threads=torch.get_num_threads())
        outcome = evaluate(model, data, data.dev, task, cpu, examples=data.dev_examples)
        tag = {"task": task, "arch": str(arch), "runtime": runtime, "model": str(path)}
        locked_append(out_dir / EVAL_RESULTS_FILE, format_kv({**outcome.metrics, **tag}))
        if data.dev_mm is not None:
            mm = evaluate(model, data, data.dev_mm, "mnli-mm", cpu).metrics
            locked_append(out_dir.parent / f"{out_dir.name}-MM" / EVAL_RESULTS_FILE,
                          format_kv({**mm, **tag, "task": "mnli-mm"}))
        best, em = ((outcome.metrics["f1"], outcome.metrics["em"]) if is_squad(task)
                    else (outcome.metrics[best_key(task)], None))
        per_batch = outcome.infer_ms / max(outcome.infer_batches, 1)
        result = TaskResult(task=task, arch=arch, param_count=param_count(arch, config),
                            best=best, em=em, time_per_batch_infer_ms=per_batch,
                            infer_cnt=outcome.infer_batches, runtime=runtime)
        locked_append(out_dir / RESULTS_FILE, format_results_block(result))
        results.append(result)
        shown.append(f"{runtime} {_metric_text(outcome, task)}")
    logger.info("%s on %s dev (%d %s): %s", model_dir.name, task, len(data.dev),
                "windows" if is_squad(task) else "examples", "; ".join(shown))
    return results


def _metric_text(outcome: EvalOutcome, task: str) -> str:
    if is_squad(task):
        return f"f1 {outcome.metrics['f1']:.2f} em {outcome.metrics['em']:.2f}"
    return f"{best_key(task)} {outcome.metrics[best_key(task)]:.4f}"
