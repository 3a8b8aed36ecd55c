"""The evaluator's configuration: superbert_run_en_classifier.py's flags (`RunConfig`, declared
once and validated once) and each task's hyper-parameters after its defaults (`TaskConfig`,
`resolve_task_config`), with the per-task flag parsing."""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..arch import Scheme
from ..cli import check_non_negative, check_positive, flag
from ..errors import UserError
from ..jobs import parse_shard
from ..modeling import CLASSIFIER_POOLINGS
from ..outputs import Output, key_value_lines, results_blocks
from ..tasks import SQUAD_TASKS, TASK_DEFAULTS, canonical_task, is_squad


# ---- configuration ------------------------------------------------------------------------------
# Files the evaluator appends to in --output_dir: what is there must be of their format.
RESULT_FILES = {"subbert.results": ("a results file", results_blocks),
                "eval_results.txt": ("an evaluation log", key_value_lines)}


def _mm_folder(cfg: "RunConfig") -> list[tuple[str, Path, Output]]:
    """<output_dir>-MM, where MNLI-mismatched scores go after MNLI (as the original)."""
    if "mnli" not in cfg.task_name.lower().split():
        return []
    out = Path(cfg.output_dir)
    return [("--output_dir's MNLI-mismatched folder", out.parent / f"{out.name}-MM",
             Output.dir(shared=True, appends={"eval_results.txt": RESULT_FILES["eval_results.txt"]}))]


@dataclass(frozen=True)
class TaskConfig:
    """The hyper-parameters of one task after the per-task defaults and the explicit flags;
    checked once, here."""

    task: str
    data_dir: str
    num_train_epochs: float
    max_seq_length: int
    learning_rate: float
    eval_step: int
    train_batch_size: int
    eval_batch_size: int = 32
    weight_decay: float = 0.01
    warmup_proportion: float = 0.1
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0

    def __post_init__(self) -> None:
        required = ("num_train_epochs", "max_seq_length", "learning_rate", "eval_step",
                    "train_batch_size", "eval_batch_size", "gradient_accumulation_steps",
                    "doc_stride", "max_query_length", "n_best_size", "max_answer_length")
        for name in required:
            if getattr(self, name) is None:
                raise UserError(f"--{name} must be given")
        check_positive(**{name: getattr(self, name) for name in
                          (*required, "max_steps", "max_train_examples", "max_eval_examples")})
        if self.train_batch_size < self.gradient_accumulation_steps:
            raise UserError(f"--train_batch_size {self.train_batch_size} is smaller than "
                            f"--gradient_accumulation_steps {self.gradient_accumulation_steps}")
        if not 0 <= self.warmup_proportion < 1:
            raise UserError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        check_non_negative(weight_decay=self.weight_decay)
        if not math.isfinite(self.null_score_diff_threshold):
            raise UserError(f"--null_score_diff_threshold must be finite, got "
                            f"{self.null_score_diff_threshold}")

    @property
    def version_2(self) -> bool:
        return self.task == "squad2"


# The flags whose default comes from the task's row of the original's table, and the value
# when the row leaves it open.
TABLE_KEYS = ("num_train_epochs", "max_seq_length", "learning_rate", "eval_step",
              "train_batch_size")
FLAG_DEFAULTS = {"num_train_epochs": 3.0, "max_seq_length": 128, "learning_rate": 5e-5,
                 "train_batch_size": 32}
# Flags with no table default that may still differ per task (None: not given).
PER_TASK_KEYS = ("max_steps",)
# The flags that apply to every task unchanged.
COMMON_KEYS = ("eval_batch_size", "weight_decay", "warmup_proportion",
               "gradient_accumulation_steps", "max_train_examples",
               "max_eval_examples", "doc_stride", "max_query_length", "n_best_size",
               "max_answer_length", "null_score_diff_threshold")


def resolve_task_config(task: str, data_dir: str, explicit: dict[str, Any],
                        common: dict[str, Any]) -> TaskConfig:
    """Per-task defaults (the original's table), overridden only by flags given explicitly
    (`explicit` holds None for a flag not given)."""
    row = asdict(TASK_DEFAULTS[task])
    values = {}
    for key in TABLE_KEYS:
        value = explicit.get(key)
        if value is None:
            value = row[key] if row[key] is not None else FLAG_DEFAULTS[key]
        values[key] = value
    values.update({key: explicit.get(key) for key in PER_TASK_KEYS})
    return TaskConfig(task=task, data_dir=data_dir, **values, **common)


PER_TASK_HELP = "; one value, or one per --task_name (e.g. '64 64 128')"


def per_task(kind: type) -> Callable[[str], tuple]:
    """argparse type of a table flag: space-separated values of `kind` (one, or one per task)."""
    def parse(text: str | int | float | tuple) -> tuple:
        if isinstance(text, tuple):
            return text
        items = str(text).split()
        try:
            values = tuple(kind(v) for v in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected space-separated {kind.__name__} values, "
                                             f"got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    parse.__name__ = f"{kind.__name__} list"
    return parse


def _one_per_task(name: str, values: tuple | int | float | None, n_tasks: int) -> list:
    """`values` of flag `name` spread to one per task (None: not given, the table decides)."""
    if values is None:
        return [None] * n_tasks
    if not isinstance(values, tuple):
        values = (values,)
    if len(values) == 1:
        return list(values) * n_tasks
    if len(values) != n_tasks:
        raise UserError(f"--{name} lists {len(values)} values for {n_tasks} tasks; give one "
                        f"value, or one per --task_name")
    return list(values)


def _split(value: str, name: str) -> list[str]:
    items = value.split()
    if not items:
        raise UserError(f"--{name} is empty")
    return items


def resolve_task_names(names: list[str], version_2_with_negative: int | None) -> list[str]:
    """Registry names of `--task_name`; `--version_2_with_negative` picks the SQuAD version of
    a plain `squad` and must agree with an explicit squad1 / squad2."""
    tasks = [canonical_task(n) for n in names]
    if version_2_with_negative is not None:
        wanted = "squad2" if version_2_with_negative else "squad1"
        for i, name in enumerate(names):
            if not is_squad(tasks[i]):
                continue
            if name.lower() in SQUAD_TASKS and tasks[i] != wanted:
                raise UserError(f"--version_2_with_negative {version_2_with_negative} "
                                f"contradicts task {name}")
            tasks[i] = wanted
        if not any(is_squad(t) for t in tasks):
            raise UserError("--version_2_with_negative needs a squad task")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"--task_name lists a task twice: {' '.join(names)}")
    return tasks


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The evaluation stage (superbert_run_en_classifier.py): its flags, declared once.

    `__post_init__` checks them and resolves `tasks` (one TaskConfig per --task_name, the
    table's defaults under the explicit flags), `seeds` and `scheme`.
    """

    data_dir: str = flag(help="space-separated task data directories, one per --task_name")
    model: str = flag(help="the supernet (or sub-model) directory")
    task_name: str = flag(help="space-separated task names")
    output_dir: str = flag(help="created if missing; results appended",
                           output=Output.dir(shared=True, appends=RESULT_FILES, also=_mm_folder,
                                             overwrite="overwrite_results"))
    cache_dir: str = flag("", help="keep tokenized task features here and reuse them in later "
                                   "runs on the same files and settings (e.g. every search "
                                   "generation); one that cannot be written is an error",
                          output=Output.cache())
    arches_file: str = flag("", help="candidate archs, one per line; default: the model's "
                                     "full arch")
    super_model: str | None = flag(None, type=str.upper, choices=("MLM", "KD"),
                                   help="the supernet's attention scheme; default: the one "
                                        "saved in its config.json (a contradiction is an error)")
    seed: str = flag("42", help="space-separated seeds; everything runs per seed")
    do_lower_case: bool = flag(False)
    # Per-task defaults apply to these unless given (None = not given); one value for every
    # task, or one per --task_name (a classifier and SQuAD rarely want the same length).
    max_seq_length: tuple[int, ...] | None = flag(None, type=per_task(int), help="default: per "
                                                  "task (128)" + PER_TASK_HELP)
    train_batch_size: tuple[int, ...] | None = flag(None, type=per_task(int), help="default: "
                                                    "per task (32)" + PER_TASK_HELP)
    learning_rate: tuple[float, ...] | None = flag(None, type=per_task(float), help="default: "
                                                   "per task (5e-5)" + PER_TASK_HELP)
    num_train_epochs: tuple[float, ...] | None = flag(None, type=per_task(float), help="default: "
                                                      "per task (3)" + PER_TASK_HELP)
    eval_step: tuple[int, ...] | None = flag(None, type=per_task(int), help="evaluate every N "
                                             "optimizer steps; default: per task" + PER_TASK_HELP)
    pooling: str | None = flag(None, choices=CLASSIFIER_POOLINGS,
                               help="what a sentence(-pair) classifier reads: cls (BERT's pooler "
                                    "over [CLS]), mean (the mean of the last layer's tokens; "
                                    "better for slices of sentence-embedding models such as "
                                    "all-MiniLM-L6-v2) or pair ([mean of sentence A, mean of "
                                    "sentence B, |A-B|, A*B]; keeps sentence pairs apart in "
                                    "narrow slices; B is zeros for one sentence). Saved with "
                                    "--save_best_model. Default: the model's "
                                    "classifier_pooling, else cls")
    eval_batch_size: int = flag(32, type=int)
    weight_decay: float = flag(0.01, "--weight_decay", "--wd", type=float,
                               help="BertAdam weight decay (not on biases / LayerNorm); "
                                    "default 0.01")
    warmup_proportion: float = flag(0.1, type=float)
    gradient_accumulation_steps: int = flag(1, type=int)
    no_cuda: bool = flag(False)
    fp16: bool = flag(False, help="float16 autocast with loss scaling on a GPU (float32 on "
                                  "CPU, warned)")
    # SQuAD
    doc_stride: int = flag(128, type=int)
    max_query_length: int = flag(64, type=int)
    n_best_size: int = flag(20, type=int)
    max_answer_length: int = flag(30, type=int)
    version_2_with_negative: int | None = flag(None, type=int, choices=(0, 1),
                                               help="1: the squad task is SQuAD 2.0 (same as "
                                                    "task squad2)")
    null_score_diff_threshold: float = flag(0.0, type=float)
    verbose_logging: bool = flag(False, help="debug-level logging")
    # Proxy evaluation (deviation from the paper: cheap, noisier scores for search).
    max_train_examples: int | None = flag(None, type=int, help="proxy: use only the first N "
                                          "training examples (questions for SQuAD)")
    max_eval_examples: int | None = flag(None, type=int,
                                         help="proxy: score only the first N dev examples")
    max_steps: tuple[int, ...] | None = flag(None, type=per_task(int), help="proxy: stop after "
                                             "N optimizer steps (replaces the epoch count)"
                                             + PER_TASK_HELP)
    save_best_model: bool = flag(False, help="save the best fine-tuned sub-model per task and "
                                 "seed to <output_dir>/<task>_seed<seed>[_<arch>]")
    # Many processes (torchrun ranks, SLURM array tasks, or --shard by hand) share the jobs.
    shard: str = flag("", group="cluster",
                      help="I/N: run only share I of N (0-based) of the (arch, task, seed) jobs, "
                           "dealt task by task, costliest arch first, to the share with the "
                           "least work (the same deal in every process). Default: torchrun's "
                           "RANK/WORLD_SIZE, else a SLURM array's task id/count, else every job")
    overwrite_results: bool = flag(False, group="cluster",
                                   help="re-evaluate jobs that already have a block in "
                                        "<output_dir>/subbert.results (by default they are "
                                        "skipped); the old file is first moved aside to "
                                        "subbert.results.bak-<time>")
    no_progress: bool = flag(False, help="no progress bar; off a terminal a progress line is "
                                         "logged every ~10 s instead, and this silences it too")
    # Deploy: score an exported fine-tuned model (no training).
    onnx: bool = flag(False, group="deploy",
                      help="evaluation only: --model is a fine-tuned model (--save_best_model "
                           "output); export it with its task head to ONNX (<output_dir>/"
                           "<model>.onnx) and score it with ONNX Runtime on the task's dev set, "
                           "one block marked 'runtime = onnxruntime-fp32'")
    int8: bool = flag(False, group="deploy",
                      help="with --onnx: also score the INT8 (dynamically quantised) export "
                           "('runtime = onnxruntime-int8')")
    opset: int = flag(17, type=int, group="deploy", help="with --onnx: the ONNX opset")
    # Resolved from the flags above by __post_init__.
    tasks: tuple[TaskConfig, ...] = field(init=False)
    seeds: tuple[int, ...] = field(init=False)
    scheme: Scheme | None = field(init=False)

    def __post_init__(self) -> None:
        dirs = _split(self.data_dir, "data_dir")
        names = _split(self.task_name, "task_name")
        if len(dirs) != len(names):
            raise UserError(f"--data_dir lists {len(dirs)} directories but --task_name lists "
                            f"{len(names)} tasks; give one directory per task")
        tasks = resolve_task_names(names, self.version_2_with_negative)
        try:
            seeds = tuple(int(s) for s in _split(self.seed, "seed"))
        except ValueError:
            raise UserError(f"--seed must be space-separated integers, got {self.seed!r}") from None
        explicit = {k: _one_per_task(k, getattr(self, k), len(tasks)) for k in (*TABLE_KEYS, *PER_TASK_KEYS)}
        common = {k: getattr(self, k) for k in COMMON_KEYS}
        task_cfgs = tuple(resolve_task_config(t, d, {k: v[i] for k, v in explicit.items()}, common)
                          for i, (t, d) in enumerate(zip(tasks, dirs)))
        object.__setattr__(self, "tasks", task_cfgs)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "scheme",
                           Scheme.parse(self.super_model) if self.super_model else None)
        if self.shard:
            parse_shard(self.shard)  # a bad spec fails before anything is read
        self._check_deploy_flags()

    def _check_deploy_flags(self) -> None:
        """--onnx scores one fine-tuned model: flags of fine-tuning or of job sharing have no
        meaning there and are refused rather than ignored."""
        if not self.onnx:
            for name in ("int8", "opset"):
                if getattr(self, name) != _default(type(self), name):
                    raise UserError(f"--{name} needs --onnx")
            return
        if len(self.tasks) != 1:
            raise UserError("--onnx scores one fine-tuned model on its one task; give one "
                            "--task_name")
        unused = [n for n in TRAINING_ONLY if getattr(self, n) != _default(type(self), n)]
        if unused:
            raise UserError(f"--onnx evaluates without training: {', '.join('--' + n for n in unused)} "
                            f"do{'es' if len(unused) == 1 else ''} not apply")


# Flags that mean nothing to --onnx (evaluation of an already fine-tuned model).
TRAINING_ONLY = ("arches_file", "seed", "train_batch_size", "learning_rate", "num_train_epochs",
                 "eval_step", "weight_decay", "warmup_proportion", "gradient_accumulation_steps",
                 "fp16", "max_train_examples", "max_steps", "save_best_model", "shard",
                 "overwrite_results", "super_model", "no_cuda", "pooling")


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)
