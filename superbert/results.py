"""The `subbert.results` file: one block per (arch, task) written by the evaluator, read by Evolved.

The block is byte-compatible with the original evaluator:

    **************S*************
    task_name = mnli
    architecture = {'sample_layer_num': 5, ...}
    parameter size = 29573882
    best_acc = 0.8123456                      (GLUE: a fraction, str(float))
    time_per_batch_infer = 12.345 ms
    infer_cnt = 1234
    **************E*************
    <blank line>

For SQuAD the score line is `best_acc = f1: 85.1234567; em: 77.0123` (0-100 scale); when no
evaluation ran it is `best_acc = ` (empty). Our evaluator adds `seed = N` before the end marker
(so a resumed run tells the seeds of one arch apart) and, for an exported model scored with ONNX
Runtime, `runtime = onnxruntime-fp32|onnxruntime-int8`; the original's parser reads only the
`architecture` and `best_acc` lines, so it is unaffected. A score that is not finite (nan, inf)
is refused on writing and on reading: it would rank an arch by noise. The reader accepts any number of tasks per arch, any
key order in the arch repr, unknown `key = value` lines (derivatives add e.g. a training time),
and puts every score on the 0-100 scale; fitness is the mean over the arch's tasks, which is the
original's mean(MNLI acc x 100, SQuAD F1) when those two tasks were evaluated.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .arch import Arch, read_arch_file
from .errors import UserError
from .io import read_text

logger = logging.getLogger(__name__)

BLOCK_START = "**************S*************"
BLOCK_END = "**************E*************"
_QA_SCORE = re.compile(r"^f1:\s*(?P<f1>\S+?)\s*;\s*em:\s*(?P<em>\S+)\s*$")


@dataclass(frozen=True)
class TaskResult:
    """One evaluated (arch, task): the content of one `subbert.results` block.

    `best` is the best dev score as the original reports it: a fraction for GLUE tasks
    (accuracy, MCC, correlation), the F1 (0-100) for SQuAD, where `em` is set too. None means
    no evaluation ran.
    """

    task: str
    arch: Arch
    param_count: int
    best: float | None
    em: float | None
    time_per_batch_infer_ms: float
    infer_cnt: int
    seed: int | None = None      # None: a block written without a seed line (the original's)
    runtime: str | None = None   # None: the torch model the evaluator fine-tuned
    line: int = field(default=0, compare=False)  # where the block starts in the file read

    @property
    def is_qa(self) -> bool:
        return self.em is not None

    @property
    def score(self) -> float:
        """The score on the 0-100 scale (the original's parse: GLUE x 100, SQuAD F1 as is)."""
        if self.best is None:
            return 0.0  # the original counts an empty `best_acc =` as 0
        return float(self.best) if self.is_qa else 100.0 * float(self.best)


def _num(x: float) -> str:
    # str(float) is what the original wrote (Python floats); also strips numpy's repr.
    return str(float(x))


def format_results_block(r: TaskResult) -> str:
    """The block exactly as the original evaluator appends it (including the trailing blank
    line), plus our `seed` and `runtime` lines when set."""
    for name, value in (("best", r.best), ("em", r.em)):
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"{r.task} {r.arch.short()}: refusing to write a {name} score of "
                             f"{value}")
    if r.best is None:
        best = ""
    elif r.em is not None:
        best = f"f1: {_num(r.best)}; em: {_num(r.em)}"
    else:
        best = _num(r.best)
    return (f"{BLOCK_START}\n"
            f"task_name = {r.task}\n"
            f"architecture = {r.arch}\n"
            f"parameter size = {int(r.param_count)}\n"
            f"best_acc = {best}\n"
            f"time_per_batch_infer = {float(r.time_per_batch_infer_ms):.3f} ms\n"
            f"infer_cnt = {int(r.infer_cnt)}\n"
            + (f"seed = {int(r.seed)}\n" if r.seed is not None else "")
            + (f"runtime = {r.runtime}\n" if r.runtime is not None else "")
            + f"{BLOCK_END}\n"
            "\n")


def _parse_best(value: str, where: str) -> tuple[float | None, float | None]:
    value = value.strip()
    if not value:
        return None, None
    m = _QA_SCORE.match(value)
    try:
        scores = (float(m["f1"]), float(m["em"])) if m else (float(value), None)
    except ValueError:
        raise UserError(f"{where}: cannot read the score {value!r}: expected a number or "
                        f"'f1: <F1>; em: <EM>'") from None
    if not all(math.isfinite(x) for x in scores if x is not None):
        raise UserError(f"{where}: the score {value!r} is not a finite number (a diverged "
                        f"fine-tuning, or a damaged file); remove or fix this block")
    return scores


def read_results(path: str | os.PathLike) -> list[TaskResult]:
    """Every block of a `subbert.results` file, in file order."""
    lines = read_text(path, "results file").splitlines()
    out: list[TaskResult] = []
    block: dict[str, tuple[int, str]] | None = None
    start = 0
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line != BLOCK_START and BLOCK_START in line:
            # a write cut short, then the next block appended straight after it
            raise UserError(f"{path}:{number}: results block is truncated (a block start "
                            f"marker follows other text on this line)")
        if line == BLOCK_START:
            if block is not None:
                raise UserError(f"{path}:{start}: results block is truncated (a new block "
                                f"starts at line {number} before its end marker)")
            block, start = {}, number
        elif line == BLOCK_END:
            if block is None:
                raise UserError(f"{path}:{number}: end marker without a block start")
            out.append(_block_to_result(block, path, start))
            block = None
        elif block is not None and line:
            key, sep, value = raw.partition("=")
            if not sep:
                raise UserError(f"{path}:{number}: results block starting at line {start} is "
                                f"truncated or malformed: expected 'key = value', got {line[:80]!r}")
            key = key.strip()
            if key in block:
                raise UserError(f"{path}:{number}: '{key}' appears twice in the results block "
                                f"starting at line {start} (a truncated block?)")
            block[key] = (number, value.strip())
        # text outside blocks (logging noise) is ignored, as the original did
    if block is not None:
        raise UserError(f"{path}:{start}: results block is truncated (no "
                        f"'{BLOCK_END}' line before the end of the file)")
    return out


def _block_to_result(block: dict[str, tuple[int, str]], path: str, start: int) -> TaskResult:
    for key in ("task_name", "architecture", "best_acc"):
        if key not in block:
            raise UserError(f"{path}:{start}: results block has no '{key} = ' line")
    number, arch_text = block["architecture"]
    try:
        arch = Arch.parse(arch_text)
    except UserError as err:
        raise UserError(f"{path}:{number}: {err}") from None
    number, best_text = block["best_acc"]
    best, em = _parse_best(best_text, f"{path}:{number}")

    def value(key: str, conv, default):
        if key not in block:
            return default
        n, text = block[key]
        try:
            return conv(text)
        except ValueError:
            raise UserError(f"{path}:{n}: cannot read {key} {text!r}") from None

    return TaskResult(
        task=block["task_name"][1].lower(),
        arch=arch,
        param_count=value("parameter size", int, arch.param_count()),
        best=best, em=em,
        time_per_batch_infer_ms=value("time_per_batch_infer",
                                      lambda s: float(s.removesuffix("ms").strip()), 0.0),
        infer_cnt=value("infer_cnt", int, 0),
        seed=value("seed", int, None),
        runtime=block["runtime"][1] if "runtime" in block else None,
        line=start)


def aggregate(results: Iterable[TaskResult]) -> dict[Arch, dict[str, float]]:
    """Scores per arch and task (0-100). Repeats of one (arch, task), e.g. several seeds or a
    re-evaluation, are averaged."""
    acc: dict[Arch, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.best is None:
            logger.warning("%s on %s has no score (no evaluation ran); counted as 0",
                           r.task, r.arch.short())
        acc[r.arch][r.task].append(r.score)
    return {a: {t: sum(v) / len(v) for t, v in tasks.items()} for a, tasks in acc.items()}


def parse_results(path: str) -> dict[Arch, dict[str, float]]:
    """`subbert.results` -> {arch: {task: score on 0-100}}, archs in first-seen order."""
    return aggregate(read_results(path))


def fitness(scores: dict[str, float]) -> float:
    """Mean of the task scores (0-100): the original's mean(MNLI acc x 100, SQuAD F1)."""
    if not scores:
        raise UserError("an arch has no task scores, so it has no fitness")
    return sum(scores.values()) / len(scores)


# ---- the search's evaluated archs ---------------------------------------------------------------
@dataclass(frozen=True)
class Evaluated:
    arch: Arch
    generation: int  # first generation file that holds it (1-based); 0 if in none
    scores: dict[str, float]  # task -> 0-100
    fitness: float


def evaluated_archs(results_file: str | os.PathLike,
                    generation_files: Sequence[str | os.PathLike] = ()) -> list[Evaluated]:
    """Every arch of `subbert.results` with its scores, fitness and generation, in file order."""
    if not Path(results_file).is_file():
        raise UserError(f"results file not found: {results_file} (run superbert_run_en_classifier.py)")
    first_gen: dict[Arch, int] = {}
    for g, path in enumerate(generation_files, 1):
        for arch in read_arch_file(str(path)):
            first_gen.setdefault(arch, g)
    scored = parse_results(str(results_file))
    if not scored:
        raise UserError(f"{results_file} holds no results")
    return [Evaluated(a, first_gen.get(a, 0), dict(s), fitness(s)) for a, s in scored.items()]


def best_arch(evaluated: Sequence[Evaluated]) -> Evaluated:
    """Highest fitness; ties go to the arch evaluated first (stable)."""
    return max(evaluated, key=lambda e: e.fitness)
