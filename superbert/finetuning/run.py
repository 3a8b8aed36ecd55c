"""Candidate evaluation: fine-tune each sub-arch of a SuperBERT on GLUE / SQuAD and score it.

For every seed x arch x task (the original's loop order, so a run cut short leaves whole archs
behind): the supernet with the task's head is loaded from disk once per task and never
trained; the task head is drawn from the seed, `set_sample_config(arch)` selects the inherited
slice (in the attention scheme saved with the supernet) and `extract_submodel` copies it into a
dense model, which is fine-tuned with BertAdam (no bias correction, decoupled weight decay,
per-tensor clipping) under the original's warm-up-linear schedule. That is the original's
in-place fine-tuning of the slice, computed densely: same forward, same gradients, same updates
of every weight the sub-model reads; the supernet stays pristine, so nothing leaks between
archs and nothing is re-read from disk. The dev set is scored every `eval_step` optimizer steps
and once more after the last step; the best score is what `subbert.results` reports.

Fixes over the original (reference 9.1): the QA head takes the last hidden state itself (no
`[-1]`); a KD supernet is evaluated in its own slicing in training and eval alike;
`--weight_decay` is used; evaluation has its own batch size; `t_total` counts optimizer steps
over features (SQuAD windows), not examples; GAS divides the batch size once; the final step is
evaluated too, so a short proxy run always has a score. Seeds reset everything an arch sees
(head, dropout, data order), so an arch scores the same alone or after others.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..arch import Arch, validate_arch
from ..errors import UserError
from ..hf import load_config, resolve_model_dir, save_model
from ..io import atomic_write_text
from ..jobs import Job, Shard, locked_append, make_jobs, resolve_shard, share_of_jobs, shared_lock
from ..results import TaskResult, format_results_block, read_results
from .config import RunConfig
from .evaluation import EvalOutcome
from .exported import run_exported
from .features import TaskData
from .loop import FinetuneResult, finetune
from .model import TaskModels
from .setup import (EVAL_RESULTS_FILE, RESULTS_FILE, check_sequence_lengths, format_kv,
                    load_all_task_data, load_archs, param_count, pick_device, resolve_precision,
                    torchrun_local_rank)

logger = logging.getLogger(__name__)

# What a classifier reads, by `classifier_pooling`, for the run's first log line.
POOLING_WORDS = {"cls": "the [CLS] pooler", "mean": "the mean of the tokens",
                 "pair": "[mean A, mean B, |A-B|, A*B] of the two segments"}


def completed_jobs(path: Path, config: Any, seeds: tuple[int, ...]) -> set[Job]:
    """The (arch, task, seed) jobs that hold a complete block in `path` (the existing reader:
    a cut block is an error naming its line). Blocks without a seed line (the original's, or
    older runs') count for a run with a single seed. Blocks of archs and tasks outside this run
    are left alone (other generations append to the same file), but an arch this supernet
    cannot hold means the file belongs to another supernet: an error naming the line."""
    if not path.exists():
        return set()
    with shared_lock(path):
        blocks = read_results(path)
    done = set()
    for block in blocks:
        try:
            validate_arch(block.arch, config)
        except UserError as err:
            raise UserError(f"{path}:{block.line}: this results block is not of this supernet's "
                            f"search space ({err}); use another --output_dir, or move the file "
                            f"aside") from None
        if block.runtime is not None:
            continue  # a deployed model's score, not a fine-tuning of the supernet's slice
        seed = block.seed if block.seed is not None else (seeds[0] if len(seeds) == 1 else None)
        if seed is not None:
            done.add(Job(block.arch, block.task, seed))
    return done


def move_aside(path: Path) -> Path:
    """Move `path` to `<path>.bak-<UTC time>` (never onto an existing file) and return it."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bak-{stamp}.{n}")
        n += 1
    os.replace(path, target)
    return target


def pending_jobs(cfg: RunConfig, jobs: list[Job], shard: Shard, results: Path,
                 config: Any) -> tuple[list[Job], int]:
    """This process's share of `jobs`, less those with a block in `results` (unless
    --overwrite_results, which moves the old file aside first), and how many were skipped.

    The share is taken from the whole job list, before looking at the file: it depends only on
    a job's index, so processes that read the file at different moments still split the same
    way."""
    mine = share_of_jobs(shard, jobs)
    if cfg.overwrite_results:
        if results.exists():
            if shard.count > 1:
                raise UserError(f"--overwrite_results with {shard.count} shares: one process "
                                f"would move {results} aside while others append to it; move "
                                f"it aside yourself, then run without --overwrite_results")
            logger.warning("--overwrite_results: moved the old %s to %s; every job runs again",
                           results, move_aside(results))
        return mine, 0
    done = completed_jobs(results, config, cfg.seeds)
    todo = [j for j in mine if j not in done]
    return todo, len(mine) - len(todo)


# ---- the whole run ------------------------------------------------------------------------------
def run(cfg: RunConfig) -> list[TaskResult]:
    """Evaluate every arch on every task for every seed, or this process's share of those
    jobs; append one `subbert.results` block per (seed, arch, task) as soon as it is known."""
    if cfg.onnx:
        return run_exported(cfg)
    model_dir = resolve_model_dir(cfg.model, need_weights=True)
    config = load_config(model_dir, cfg.scheme)  # a --super_model contradiction fails here
    archs = load_archs(cfg, config)
    check_sequence_lengths(cfg.tasks, config)
    if cfg.shard and int(os.environ.get("WORLD_SIZE") or 1) > 1:
        raise UserError("--shard under torchrun: every rank would run the same share; let the "
                        "ranks split the jobs (drop --shard), or run plain processes with --shard")
    shard = resolve_shard(cfg.shard or None)
    device = pick_device(cfg.no_cuda, torchrun_local_rank() if shard.source == "torchrun rank" else None)
    fp16 = resolve_precision(device, cfg.fp16)

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(archs, [t.task for t in cfg.tasks], cfg.seeds)
    results_file = out_dir / RESULTS_FILE
    todo, skipped = pending_jobs(cfg, jobs, shard, results_file, config)
    where = "" if shard.count == 1 else f"; share {shard}: {len(share_of_jobs(shard, jobs))} of them"
    pooling = cfg.pooling or config.classifier_pooling
    logger.info("evaluating %d jobs (%d arch(s) x %d task(s) x %d seed(s))%s on %s "
                "(%s scheme; classifiers read %s)", len(jobs), len(archs), len(cfg.tasks),
                len(cfg.seeds), where, device, config.attention_scheme.upper(),
                POOLING_WORDS[pooling])
    if skipped:
        logger.info("%d of %d jobs already have results in %s: skipped", skipped,
                    len(todo) + skipped, results_file)
    if not todo:
        logger.info("nothing to evaluate")
        return []
    needed = tuple(t for t in cfg.tasks if any(j.task == t.task for j in todo))
    datas = {d.task: d for d in load_all_task_data(cfg, model_dir, needed)}
    models = TaskModels(model_dir, cfg.scheme, cfg.pooling)
    results: list[TaskResult] = []
    for i, job in enumerate(todo, 1):
        results.append(_run_one(cfg, models, job, datas[job.task], device, fp16, config,
                                model_dir, out_dir, several=len(archs) > 1,
                                label=f"job {i}/{len(todo)} {job.task} {job.arch.short()}"))
    return results


def _run_one(cfg: RunConfig, models: TaskModels, job: Job, data: TaskData,
             device: torch.device, fp16: bool, config, model_dir: Path, out_dir: Path,
             several: bool, label: str) -> TaskResult:
    """Fine-tune one arch on one task for one seed and write everything it produced. Every
    file is appended under a lock: other processes append to the same files."""
    task, arch, seed = job.task, job.arch, job.seed
    model = models.get(data)
    tag = {"task": task, "seed": seed, "arch": str(arch)}

    def on_eval(record: dict[str, Any], outcome: EvalOutcome) -> None:
        locked_append(out_dir / EVAL_RESULTS_FILE, format_kv({**record, **tag}))

    t0 = time.perf_counter()
    res = finetune(model, arch, data, seed, device, fp16, keep_best_model=cfg.save_best_model,
                   on_eval=on_eval, progress=not cfg.no_progress, label=label)
    _write_side_outputs(cfg, res, data, arch, seed, tag, model_dir, out_dir, several)
    result = TaskResult(task=task, arch=arch,
                        param_count=param_count(arch, config),
                        best=res.best, em=res.em,
                        time_per_batch_infer_ms=res.time_per_batch_infer_ms,
                        infer_cnt=res.infer_cnt, seed=seed)
    locked_append(out_dir / RESULTS_FILE, format_results_block(result))
    logger.info("%s seed %d: best %s (%d steps, %.1f s)", label, seed, _shown(res.best, res.em),
                res.global_step, time.perf_counter() - t0)
    return result


def _shown(best: float | None, em: float | None) -> str:
    if best is None:
        return "none"
    return f"f1 {best:.2f} em {em:.2f}" if em is not None else f"{best:.4f}"


def _write_side_outputs(cfg: RunConfig, res: FinetuneResult, data: TaskData, arch: Arch,
                        seed: int, tag: dict[str, Any], model_dir: Path, out_dir: Path,
                        several: bool) -> None:
    """SQuAD predictions of the best evaluation, MNLI-mismatched scores, the best model."""
    if res.best_predictions is not None:
        preds, nbest, odds = res.best_predictions
        atomic_write_text(out_dir / "predictions.json", json.dumps(preds, indent=4) + "\n")
        atomic_write_text(out_dir / "nbest_predictions.json", json.dumps(nbest, indent=4) + "\n")
        if data.cfg.version_2:
            atomic_write_text(out_dir / "null_odds.json", json.dumps(odds, indent=4) + "\n")
    if res.final_mm is not None:
        mm_dir = out_dir.parent / f"{out_dir.name}-MM"
        locked_append(mm_dir / EVAL_RESULTS_FILE, format_kv(
            {**res.final_mm, "global_step": res.global_step, **tag, "task": "mnli-mm"}))
    if cfg.save_best_model and res.best_model is not None:
        name = f"{data.task}_seed{seed}" + (f"_{_arch_tag(arch)}" if several else "")
        vocab = model_dir / "vocab.txt"
        save_model(res.best_model, out_dir / name, vocab if vocab.is_file() else None,
                   do_lower_case=cfg.do_lower_case)


def _arch_tag(arch: Arch) -> str:
    return arch.short().replace("/", "_")
