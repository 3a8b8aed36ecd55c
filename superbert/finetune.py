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

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from .arch import Arch, Scheme, arch_of_config, read_arch_file, unique, validate_arch
from .cli import progress_seconds
from .errors import UserError
from .hf import file_md5, load_config, load_model, load_tokenizer, resolve_model_dir, save_model
from .io import atomic_path, atomic_write_text, file_digest
from .jobs import (Job, Shard, locked_append, make_jobs, resolve_shard,
                   share_of_jobs, shared_lock)
from .modeling import (AutoTinyBertForQuestionAnswering,
                       AutoTinyBertForSequenceClassification, AutoTinyBertPreTrainedModel,
                       extract_submodel)
from .optim import BertAdam, make_optimizer, warmup_linear
from .finetuning.config import RunConfig, TaskConfig
from .results import TaskResult, format_results_block, read_results
from .tasks import is_squad
from .tasks import glue, squad
from .tasks.metrics import best_key, glue_metrics, squad_v1_evaluate, squad_v2_evaluate

logger = logging.getLogger(__name__)

RESULTS_FILE = "subbert.results"
EVAL_RESULTS_FILE = "eval_results.txt"
BERT_ADAM_EPS = 1e-6  # BertAdam's own default, which the original evaluator used
FEATURES_VERSION = 2  # bump when the feature layout changes (invalidates --cache_dir entries)




# ---- data ---------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """A task's tokenized train and dev sets (built once per run, shared by every arch)."""

    cfg: TaskConfig
    train: Any                   # glue.Features or squad.SquadFeatures
    dev: Any
    num_labels: int
    dev_examples: list = field(default_factory=list)  # SQuAD: examples for decoding
    dev_mm: Any = None           # MNLI: dev_mismatched, scored once after training

    @property
    def task(self) -> str:
        return self.cfg.task


def task_files(cfg: TaskConfig) -> list[Path]:
    data_dir = Path(cfg.data_dir)
    if is_squad(cfg.task):
        return [data_dir / squad.TRAIN_FILES[cfg.task], data_dir / squad.DEV_FILES[cfg.task]]
    spec = glue.GLUE[cfg.task]
    files = [data_dir / spec.train_file, data_dir / spec.dev_file]
    if cfg.task == "mnli":
        files.append(data_dir / glue.GLUE["mnli-mm"].dev_file)
    return files


def _cache_key(cfg: TaskConfig, tokenizer_id: str) -> str:
    """What the features depend on: the files (path, size, mtime), the tokenizer, the
    tokenization settings and the example caps."""
    stats = []
    for f in task_files(cfg):
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    keys = ("task", "max_seq_length", "doc_stride", "max_query_length", "max_train_examples",
            "max_eval_examples")
    payload = json.dumps([FEATURES_VERSION, tokenizer_id, stats,
                          {k: getattr(cfg, k) for k in keys}], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def load_task_data(cfg: TaskConfig, tokenizer, cache_dir: str | None = None,
                   tokenizer_id: str = "") -> TaskData:
    """Read and tokenize a task; with `cache_dir`, reuse the features of an earlier run on the
    same files and settings (each search generation re-reads the same MNLI / SQuAD)."""
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory for {cfg.task} not found: {data_dir}")
    path, damaged = None, False
    if cache_dir:
        for f in task_files(cfg):
            if not f.is_file():
                raise UserError(f"{cfg.task} file not found: {f}")
        path = Path(cache_dir) / f"features-{cfg.task}-{_cache_key(cfg, tokenizer_id)}"
        if path.is_dir():
            try:
                data = read_feature_cache(path, cfg)
                logger.info("%s: features from the cache %s", cfg.task, path)
                return data
            except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
                # a damaged or altered entry is rebuilt, never trusted
                logger.warning("%s: rebuilding the feature cache %s: %s", cfg.task, path, err)
                damaged = True
    data = _read_task_data(cfg, tokenizer)
    if path is not None and (damaged or not path.is_dir()):
        # Processes sharing a run (torchrun ranks) may all build the same entry: the first
        # complete one stays; a process that loses the race keeps its own copy in memory.
        try:
            with atomic_path(path) as tmp:
                write_feature_cache(tmp, data)
        except OSError as err:
            if not path.is_dir():
                logger.warning("%s: could not store the feature cache %s (%s)", cfg.task, path,
                               err)
    return data


# ---- the feature cache: tensors in safetensors, the rest in JSON (nothing is unpickled) ---------
CACHE_TENSORS, CACHE_META = "features.safetensors", "features.json"
_GLUE_TENSORS = ("input_ids", "token_type_ids", "lengths", "labels")
_SQUAD_TENSORS = ("input_ids", "token_type_ids", "lengths", "start_positions", "end_positions")
_SQUAD_LISTS = ("example_index", "offsets", "max_context")


def write_feature_cache(out: Path, data: TaskData) -> None:
    """`data`'s features as a directory: features.safetensors (every tensor) and features.json
    (the lists, SQuAD's dev examples, and the tensors file's sha256)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    parts: dict[str, Any] = {}
    for part in ("train", "dev", "dev_mm"):
        feats = getattr(data, part)
        if feats is None:
            parts[part] = None
            continue
        qa = isinstance(feats, squad.SquadFeatures)
        for name in _SQUAD_TENSORS if qa else _GLUE_TENSORS:
            tensors[f"{part}.{name}"] = getattr(feats, name).contiguous()
        parts[part] = {"kind": "squad" if qa else "glue",
                       **({n: getattr(feats, n) for n in _SQUAD_LISTS} if qa else {})}
    save_file(tensors, str(out / CACHE_TENSORS))
    meta = {"version": FEATURES_VERSION, "num_labels": data.num_labels, "parts": parts,
            "dev_examples": [asdict(e) for e in data.dev_examples],
            "sha256": file_digest(out / CACHE_TENSORS)}
    (out / CACHE_META).write_text(json.dumps(meta), encoding="utf-8")


def read_feature_cache(path: Path, cfg: TaskConfig) -> TaskData:
    """The TaskData `write_feature_cache` wrote; ValueError if it is not intact."""
    from safetensors.torch import load_file

    meta = json.loads((path / CACHE_META).read_text(encoding="utf-8"))
    if meta.get("version") != FEATURES_VERSION:
        raise ValueError(f"features version {meta.get('version')}, not {FEATURES_VERSION}")
    if file_digest(path / CACHE_TENSORS) != meta["sha256"]:
        raise ValueError(f"{CACHE_TENSORS} does not match the checksum in {CACHE_META}")
    tensors = load_file(str(path / CACHE_TENSORS))
    parts = {}
    for part, spec in meta["parts"].items():
        if spec is None:
            parts[part] = None
            continue
        qa = spec["kind"] == "squad"
        values = {n: tensors[f"{part}.{n}"] for n in (_SQUAD_TENSORS if qa else _GLUE_TENSORS)}
        if qa:
            values["example_index"] = [int(i) for i in spec["example_index"]]
            values["offsets"] = [[None if o is None else (int(o[0]), int(o[1])) for o in row]
                                 for row in spec["offsets"]]
            values["max_context"] = [[bool(b) for b in row] for row in spec["max_context"]]
        feats = (squad.SquadFeatures if qa else glue.Features)(**values)
        rows = {len(v) for v in values.values() if isinstance(v, (torch.Tensor, list)) and
                (not isinstance(v, list) or v)}
        if len(rows) != 1:
            raise ValueError(f"{part}: fields of different lengths {sorted(rows)}")
        parts[part] = feats
    examples = [squad.SquadExample(**{**e, "answers": tuple(e["answers"])})
                for e in meta["dev_examples"]]
    return TaskData(cfg, parts["train"], parts["dev"], int(meta["num_labels"]),
                    dev_examples=examples, dev_mm=parts["dev_mm"])


def _read_task_data(cfg: TaskConfig, tokenizer) -> TaskData:
    data_dir = Path(cfg.data_dir)
    if is_squad(cfg.task):
        v2 = cfg.version_2
        train_ex = squad.read_squad(data_dir / squad.TRAIN_FILES[cfg.task], True, v2,
                                    cfg.max_train_examples)
        dev_ex = squad.read_squad(data_dir / squad.DEV_FILES[cfg.task], False, v2,
                                  cfg.max_eval_examples)
        common = (tokenizer, cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length)
        train = squad.convert_examples_to_features(train_ex, *common, is_training=True)
        dev = squad.convert_examples_to_features(dev_ex, *common, is_training=False)
        return TaskData(cfg, train, dev, 2, dev_examples=dev_ex)
    spec = glue.GLUE[cfg.task]
    train_ex = glue.read_examples(spec, data_dir, "train", cfg.max_train_examples)
    dev_ex = glue.read_examples(spec, data_dir, "dev", cfg.max_eval_examples)
    convert = lambda ex: glue.convert_examples_to_features(ex, spec, tokenizer, cfg.max_seq_length)  # noqa: E731
    data = TaskData(cfg, convert(train_ex), convert(dev_ex), spec.num_labels)
    if cfg.task == "mnli":
        mm = glue.read_examples(glue.GLUE["mnli-mm"], data_dir, "dev", cfg.max_eval_examples)
        data.dev_mm = convert(mm)
    return data


def _batch(features: Any, index: torch.Tensor, device: torch.device, with_labels: bool) -> dict[str, torch.Tensor]:
    """Rows `index` cut to their longest sequence, on `device`."""
    T = int(features.lengths[index].max())
    batch = {"input_ids": features.input_ids[index, :T].long(),
             "token_type_ids": features.token_type_ids[index, :T].long(),
             "attention_mask": (torch.arange(T)[None, :] < features.lengths[index][:, None]).long()}
    if with_labels:
        if isinstance(features, squad.SquadFeatures):
            batch["start_positions"] = features.start_positions[index]
            batch["end_positions"] = features.end_positions[index]
        else:
            batch["labels"] = features.labels[index]
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---- models: the supernet loaded once per task head; each arch trains its own extracted copy ----
class TaskModels:
    """One supernet task model per head kind (classification with n labels, QA), each loaded
    from the model directory once and kept on the CPU. It is never trained: every arch is
    fine-tuned in a dense copy of its slice (`inherit`), so the supernet stays pristine."""

    def __init__(self, model_dir: Path, scheme: Scheme | None, pooling: str | None = None):
        self.model_dir, self.scheme = model_dir, scheme
        self.overrides = {} if pooling is None else {"classifier_pooling": pooling}
        self._cache: dict[tuple, AutoTinyBertPreTrainedModel] = {}

    def get(self, data: TaskData) -> AutoTinyBertPreTrainedModel:
        key = ("qa",) if is_squad(data.task) else ("cls", data.num_labels)
        if key not in self._cache:
            if key[0] == "qa":
                model = load_model(self.model_dir, AutoTinyBertForQuestionAnswering, self.scheme)
            else:
                model = load_model(self.model_dir, AutoTinyBertForSequenceClassification,
                                   self.scheme, num_labels=data.num_labels, **self.overrides)
            for p in model.parameters():
                p.requires_grad_(False)
            self._cache[key] = model
        return self._cache[key]


@torch.no_grad()
def init_head(model: AutoTinyBertPreTrainedModel, seed: int) -> None:
    """Draw the supernet's task head from `seed` alone (the original drew it from the global
    RNG after its per-seed reset), so an arch's start does not depend on the archs before it."""
    head = model.qa_outputs if hasattr(model, "qa_outputs") else model.classifier
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(head.weight.shape).normal_(0.0, model.config.initializer_range, generator=g)
    head.weight.copy_(w.to(head.weight))
    head.bias.zero_()


def inherit(supernet: AutoTinyBertPreTrainedModel, arch: Arch, seed: int,
            device: torch.device) -> AutoTinyBertPreTrainedModel:
    """The sub-model `arch` with the weights it inherits from the supernet (its slice, in the
    supernet's attention scheme) and a head drawn from `seed`, ready to fine-tune.

    Training this dense copy is the same computation as training the slice in place (the
    original): forward and gradients equal by construction, and BertAdam moves entries outside
    the slice only by weight decay, which no sub-model output reads. It runs at dense speed,
    updates only the slice's parameters, and leaves nothing to restore between archs.
    """
    init_head(supernet, seed)
    sub = extract_submodel(supernet, arch)  # set_sample_config(arch), then copy the slice
    for p in sub.parameters():
        p.requires_grad_(True)
    return sub.to(device)


# ---- one arch on one task -----------------------------------------------------------------------
@dataclass
class EvalOutcome:
    """The scores of one evaluation, plus what was timed."""

    metrics: dict[str, float]
    score: float            # what "best" ranks (GLUE: the task's metric; SQuAD: f1 + em)
    infer_ms: float
    infer_batches: int
    predictions: tuple | None = None  # SQuAD: (predictions, nbest, null_odds)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, fp16: bool):
    if fp16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class _DevPass:
    """The raw outputs of one pass over a dev set, and the time its forwards took."""

    outputs: list[tuple[np.ndarray, ...]]  # per batch: (logits,) or (start, end logits)
    loss_sum: float                        # GLUE: summed example losses
    infer_s: float
    batches: int


@torch.no_grad()
def _forward_dev(model: AutoTinyBertPreTrainedModel, features: Any, qa: bool, batch_size: int,
                 device: torch.device, fp16: bool) -> _DevPass:
    """Run `features` through the model in eval mode; timing covers the forwards only."""
    was_training = model.training
    model.eval()
    n = len(features)
    dev = _DevPass([], 0.0, 0.0, 0)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(start + batch_size, n))
        batch = _batch(features, index, device, with_labels=not qa)
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


def _squad_scores(cfg: TaskConfig, dev: _DevPass, features: Any, examples: list
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


def _glue_scores(task: str, num_labels: int, dev: _DevPass, features: Any) -> dict[str, float]:
    logits = np.concatenate([o[0] for o in dev.outputs])
    preds = logits.reshape(-1) if num_labels == 1 else logits.argmax(axis=1)
    metrics = glue_metrics(task, preds, features.labels.numpy())
    metrics["eval_loss"] = dev.loss_sum / max(len(features), 1)
    return metrics


def evaluate(model: AutoTinyBertPreTrainedModel, data: TaskData, features: Any, task: str,
             device: torch.device, fp16: bool = False, examples: list | None = None) -> EvalOutcome:
    """Score `features` (a dev set of `task`); timing covers the forward passes only."""
    qa = is_squad(task)
    dev = _forward_dev(model, features, qa, data.cfg.eval_batch_size, device, fp16)
    if qa:
        metrics, predictions = _squad_scores(data.cfg, dev, features, examples)
        return EvalOutcome(metrics, metrics["f1"] + metrics["em"], 1000 * dev.infer_s,
                           dev.batches, predictions)
    metrics = _glue_scores(task, data.num_labels, dev, features)
    return EvalOutcome(metrics, metrics[best_key(task)], 1000 * dev.infer_s, dev.batches)


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


def train_steps(model: AutoTinyBertPreTrainedModel, data: TaskData, plan: StepPlan,
                optimizer: BertAdam, scheduler: torch.optim.lr_scheduler.LambdaLR,
                order: torch.Generator, device: torch.device, fp16: bool,
                progress: "Progress") -> Iterator[tuple[int, float]]:
    """The training loop. Yields `(step, mean training loss so far)` after every optimizer
    step at which the dev set is due (every `eval_step` steps, and the last step)."""
    cfg = data.cfg
    gas = plan.gas
    n = len(data.train)
    scaler = torch.amp.GradScaler("cuda", enabled=fp16 and device.type == "cuda")
    loss_sum, loss_steps = torch.zeros((), device=device), 0  # summed on the device: no sync
    model.train()
    optimizer.zero_grad(set_to_none=True)
    step = micro = 0
    while step < plan.t_total:
        perm = torch.randperm(n, generator=order)
        for b in range(plan.micro_per_epoch):
            index = perm[b * plan.micro_batch_size:(b + 1) * plan.micro_batch_size]
            batch = _batch(data.train, index, device, with_labels=True)
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
            progress.step(step, lambda: float(loss_sum) / max(loss_steps, 1))
            if step % cfg.eval_step == 0 or step == plan.t_total:
                yield step, float(loss_sum) / max(loss_steps, 1)
            if step >= plan.t_total:
                break


# Without a terminal (a cluster job's log): a progress line this often, at most.
PROGRESS_SECONDS = 10.0


class Progress:
    """A fine-tuning's progress: a tqdm bar on a terminal; off one, a log line every
    PROGRESS_SECONDS (or SUPERBERT_PROGRESS_SECONDS) with the job, step, running loss and ETA; nothing when disabled."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label = total, label
        self.bar = (tqdm(total=total, desc=label, leave=False)
                    if enabled and sys.stderr.isatty() else None)
        self.log = enabled and self.bar is None
        self.start = self.last = time.perf_counter()
        self.seconds = progress_seconds(PROGRESS_SECONDS)

    def step(self, step: int, mean_loss: Callable[[], float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.log and now - self.last >= self.seconds:
            self.last = now
            eta = (self.total - step) * (now - self.start) / step
            logger.info("%s: step %d/%d loss %.4f ETA %s", self.label, step, self.total,
                        mean_loss(), _duration(eta))

    def score(self, score: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(score=f"{score:.4g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


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
    bar = Progress(plan.t_total, label or f"{task} {arch.short()}", progress)
    for step, train_loss in train_steps(model, data, plan, optimizer, scheduler, order, device,
                                        fp16, bar):
        outcome = evaluate(model, data, data.dev, task, device, fp16, data.dev_examples)
        if not (math.isfinite(train_loss) and math.isfinite(outcome.score)):
            logger.warning("%s: training loss %s, dev score %s at step %d: the fine-tuning "
                           "diverged; a non-finite score never counts as the best", bar.label,
                           train_loss, outcome.score, step)
        record = record_evaluation(result, best, outcome, step, train_loss, task, model,
                                   keep_best_model)
        if on_eval is not None:
            on_eval(record, outcome)
        bar.score(outcome.score)
        result.global_step = step
    bar.close()
    if data.dev_mm is not None:
        # The original scores MNLI-mismatched once, with the final model.
        result.final_mm = evaluate(model, data, data.dev_mm, "mnli-mm", device, fp16).metrics
    if keep_best_model and best.state is not None:
        model.load_state_dict(best.state)
        result.best_model = model.cpu()
    return result


# ---- the whole run ------------------------------------------------------------------------------
def pick_device(no_cuda: bool, local_rank: int | None = None) -> torch.device:
    """The GPU (under torchrun: this node's GPU LOCAL_RANK), else the CPU."""
    if no_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                        f"GPU(s): start at most that many processes per node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _local_rank() -> int | None:
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value and value.isdigit() else None


def _format_kv(record: dict[str, Any]) -> str:
    return "".join(f"{k} = {record[k]}\n" for k in sorted(record))


def _arch_tag(arch: Arch) -> str:
    return arch.short().replace("/", "_")


def load_archs(cfg: RunConfig, config: Any) -> list[Arch]:
    """The archs to evaluate (--arches_file, de-duplicated, else the model's full arch), each
    checked to fit the supernet."""
    if cfg.arches_file:
        archs = read_arch_file(cfg.arches_file)
        if not archs:
            raise UserError(f"{cfg.arches_file} holds no architectures")
        if len(unique(archs)) != len(archs):
            logger.warning("%s lists %d duplicate archs; each is evaluated once",
                           cfg.arches_file, len(archs) - len(unique(archs)))
            archs = unique(archs)
    else:
        archs = [arch_of_config(config)]
    for arch in archs:
        try:
            validate_arch(arch, config)
        except UserError as err:
            where = f"{cfg.arches_file}: " if cfg.arches_file else ""
            raise UserError(f"{where}{err}") from None
    return archs


def check_sequence_lengths(tasks: tuple[TaskConfig, ...], config: Any) -> None:
    for t in tasks:
        if t.max_seq_length > config.max_position_embeddings:
            raise UserError(f"{t.task}: max_seq_length {t.max_seq_length} exceeds the model's "
                            f"max_position_embeddings {config.max_position_embeddings} (pass "
                            f"--max_seq_length)")


def resolve_precision(device: torch.device, fp16: bool) -> bool:
    """float16 only on a GPU; asked for on the CPU, it is warned about and dropped."""
    if fp16 and device.type != "cuda":
        warnings.warn("--fp16 needs a GPU: running in float32 on the CPU")
        logger.warning("--fp16 needs a GPU: running in float32 on the CPU")
        return False
    return fp16


def load_all_task_data(cfg: RunConfig, model_dir: Path,
                       tasks: tuple[TaskConfig, ...] | None = None) -> list[TaskData]:
    """Every task's files (of `tasks`, default all) read and tokenized before any training, so
    bad data fails fast."""
    tokenizer = load_tokenizer(model_dir, cfg.do_lower_case)
    vocab = model_dir / "vocab.txt"
    tok_id = f"{file_md5(vocab) if vocab.is_file() else 'bundled'}-lower{int(cfg.do_lower_case)}"
    datas = [load_task_data(t, tokenizer, cfg.cache_dir or None, tok_id)
             for t in (cfg.tasks if tasks is None else tasks)]
    for data in datas:
        logger.info("%s: %d train / %d dev %s", data.task, len(data.train), len(data.dev),
                    "windows" if is_squad(data.task) else "examples")
    return datas


# ---- resuming: which jobs already have a block ---------------------------------------------------
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
    device = pick_device(cfg.no_cuda, _local_rank() if shard.source == "torchrun rank" else None)
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
                "the mean of the tokens" if pooling == "mean" else "the [CLS] pooler")
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
        locked_append(out_dir / EVAL_RESULTS_FILE, _format_kv({**record, **tag}))

    t0 = time.perf_counter()
    res = finetune(model, arch, data, seed, device, fp16, keep_best_model=cfg.save_best_model,
                   on_eval=on_eval, progress=not cfg.no_progress, label=label)
    _write_side_outputs(cfg, res, data, arch, seed, tag, model_dir, out_dir, several)
    result = TaskResult(task=task, arch=arch,
                        param_count=_param_count(arch, config),
                        best=res.best, em=res.em,
                        time_per_batch_infer_ms=res.time_per_batch_infer_ms,
                        infer_cnt=res.infer_cnt, seed=seed)
    locked_append(out_dir / RESULTS_FILE, format_results_block(result))
    logger.info("%s seed %d: best %s (%d steps, %.1f s)", label, seed, _shown(res.best, res.em),
                res.global_step, time.perf_counter() - t0)
    return result


def _param_count(arch: Arch, config: Any) -> int:
    return arch.param_count(config.vocab_size, config.max_position_embeddings,
                            config.type_vocab_size)


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
        locked_append(mm_dir / EVAL_RESULTS_FILE, _format_kv(
            {**res.final_mm, "global_step": res.global_step, **tag, "task": "mnli-mm"}))
    if cfg.save_best_model and res.best_model is not None:
        name = f"{data.task}_seed{seed}" + (f"_{_arch_tag(arch)}" if several else "")
        vocab = model_dir / "vocab.txt"
        save_model(res.best_model, out_dir / name, vocab if vocab.is_file() else None,
                   do_lower_case=cfg.do_lower_case)


# ---- deploy: score an exported model with the evaluator's metrics -------------------------------
def run_exported(cfg: RunConfig) -> list[TaskResult]:
    """Score a fine-tuned model (a --save_best_model directory) as deployed: export it with its
    task head to ONNX (and INT8 with --int8), run the dev set through ONNX Runtime with the same
    `evaluate` as fine-tuning uses, and append one block per runtime (`runtime = ...`). The
    torch model's score on the same dev set is logged beside them."""
    from . import deploy  # onnx and onnxruntime are optional: imported only here

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
        locked_append(out_dir / EVAL_RESULTS_FILE, _format_kv({**outcome.metrics, **tag}))
        if data.dev_mm is not None:
            mm = evaluate(model, data, data.dev_mm, "mnli-mm", cpu).metrics
            locked_append(out_dir.parent / f"{out_dir.name}-MM" / EVAL_RESULTS_FILE,
                          _format_kv({**mm, **tag, "task": "mnli-mm"}))
        best, em = ((outcome.metrics["f1"], outcome.metrics["em"]) if is_squad(task)
                    else (outcome.metrics[best_key(task)], None))
        per_batch = outcome.infer_ms / max(outcome.infer_batches, 1)
        result = TaskResult(task=task, arch=arch, param_count=_param_count(arch, config),
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
