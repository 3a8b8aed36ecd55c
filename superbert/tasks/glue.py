"""GLUE: the TSV files as distributed, their label sets, and model features.

Each task's layout (column positions, header line, file names) is one `GlueTask` row, read
exactly as the original's processors did: tab-separated, no quoting (GLUE text holds bare `"`),
text_a / text_b / label at fixed columns (negative = counted from the end, as MNLI's gold_label
follows a variable number of annotator labels). A row with too few columns or an unknown label
is an error naming the file and line; only QQP skips short rows, as every GLUE reader does
(the distributed train.tsv has a few broken lines).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..io import read_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputExample:
    guid: str
    text_a: str
    text_b: str | None
    label: str


@dataclass(frozen=True)
class GlueTask:
    name: str
    train_file: str
    dev_file: str
    text_a: int
    text_b: int | None
    label: int
    min_columns: int
    header: bool
    labels: tuple[str, ...] | None  # None: regression (STS-B)
    metric: str  # the dev score reported as best_acc
    skip_short_rows: bool = False

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
GLUE: dict[str, GlueTask] = {
    # CoLA: no header; source, label, original annotation, sentence.
    "cola": GlueTask("cola", "train.tsv", "dev.tsv", 3, None, 1, 4, False, _BINARY, "mcc"),
    # MNLI: 12 columns in train, 16 in dev (5 annotator labels); sentence1/2 at 8/9, gold last.
    "mnli": GlueTask("mnli", "train.tsv", "dev_matched.tsv", 8, 9, -1, 12, True,
                     ("contradiction", "entailment", "neutral"), "acc"),
    "mnli-mm": GlueTask("mnli-mm", "train.tsv", "dev_mismatched.tsv", 8, 9, -1, 12, True,
                        ("contradiction", "entailment", "neutral"), "acc"),
    # MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String.
    "mrpc": GlueTask("mrpc", "train.tsv", "dev.tsv", 3, 4, 0, 5, True, _BINARY, "acc"),
    # SST-2: sentence, label.
    "sst-2": GlueTask("sst-2", "train.tsv", "dev.tsv", 0, None, 1, 2, True, _BINARY, "acc"),
    # STS-B: index genre filename year old_index source1 source2 sentence1 sentence2 score.
    "sts-b": GlueTask("sts-b", "train.tsv", "dev.tsv", 7, 8, -1, 10, True, None, "corr"),
    # QQP: id qid1 qid2 question1 question2 is_duplicate.
    "qqp": GlueTask("qqp", "train.tsv", "dev.tsv", 3, 4, 5, 6, True, _BINARY, "acc",
                    skip_short_rows=True),
    # QNLI: index question sentence label.
    "qnli": GlueTask("qnli", "train.tsv", "dev.tsv", 1, 2, -1, 4, True, _NLI2, "acc"),
    # RTE, WNLI: index sentence1 sentence2 label.
    "rte": GlueTask("rte", "train.tsv", "dev.tsv", 1, 2, -1, 4, True, _NLI2, "acc"),
    "wnli": GlueTask("wnli", "train.tsv", "dev.tsv", 1, 2, -1, 4, True, _BINARY, "acc"),
}


def read_tsv(path: str | os.PathLike) -> list[list[str]]:
    """Rows of a tab-separated file, no quoting (as GLUE is distributed); a leading BOM is
    dropped."""
    text = read_text(path, "GLUE file").removeprefix("\ufeff")
    return [line.split("\t") for line in text.split("\n") if line.strip()]


def split_file(task: GlueTask, split: str) -> str:
    if split == "train":
        return task.train_file
    if split == "dev":
        return task.dev_file
    raise ValueError(f"unknown split {split!r}")


def read_examples(task: GlueTask, data_dir: str | os.PathLike, split: str,
                  max_examples: int | None = None) -> list[InputExample]:
    """The examples of `split` ("train" or "dev") of a GLUE task directory."""
    path = Path(data_dir) / split_file(task, split)
    rows = read_tsv(path)
    first = 1 if task.header else 0
    if task.header and not rows:
        raise UserError(f"{path} is empty (expected a header line and examples)")
    examples: list[InputExample] = []
    skipped = 0
    for number, row in enumerate(rows[first:], first + 1):
        if max_examples is not None and len(examples) >= max_examples:
            break
        if len(row) < task.min_columns:
            if task.skip_short_rows:
                skipped += 1
                continue
            raise UserError(f"{path}:{number}: expected at least {task.min_columns} "
                            f"tab-separated columns for {task.name}, found {len(row)} "
                            f"(is this the {task.name.upper()} file?)")
        label = row[task.label].strip()
        if task.labels is None:
            try:
                float(label)
            except ValueError:
                raise UserError(f"{path}:{number}: {task.name} score {label!r} is not a "
                                f"number") from None
        elif label not in task.labels:
            raise UserError(f"{path}:{number}: unknown {task.name} label {label!r} "
                            f"(expected one of {', '.join(task.labels)})")
        text_b = row[task.text_b] if task.text_b is not None else None
        examples.append(InputExample(f"{split}-{number}", row[task.text_a], text_b, label))
    if skipped:
        logger.warning("%s: skipped %d rows with fewer than %d columns", path, skipped,
                       task.min_columns)
    if not examples:
        raise UserError(f"{path} holds no {task.name} examples")
    return examples


@dataclass
class Features:
    """Token ids padded to a common length; `lengths` lets a batch be cut to its longest row.

    Stored compactly (int32 ids, uint8 segments: MNLI's 393k rows take 250 MB, not 800 MB);
    batches are widened to int64 when they are cut.
    """

    input_ids: torch.Tensor       # [N, T] int32
    token_type_ids: torch.Tensor  # [N, T] uint8
    lengths: torch.Tensor         # [N] long
    labels: torch.Tensor          # [N] long, or float for regression

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


CHUNK = 8192  # examples per tokenizer call: bounds the tokenizer's per-call memory


def convert_examples_to_features(examples: list[InputExample], task: GlueTask, tokenizer,
                                 max_seq_length: int) -> Features:
    """[CLS] a [SEP] (b [SEP]), truncated longest-first to `max_seq_length` (the original's
    `_truncate_seq_pair`)."""
    if max_seq_length < 3 + (1 if task.text_b is not None else 0):
        raise UserError(f"--max_seq_length {max_seq_length} is too short for {task.name}")
    n = len(examples)
    ids = torch.full((n, max_seq_length), tokenizer.pad_token_id, dtype=torch.int32)
    types = torch.zeros((n, max_seq_length), dtype=torch.uint8)
    lengths = torch.zeros(n, dtype=torch.long)
    for start in range(0, n, CHUNK):
        part = examples[start:start + CHUNK]
        a = [e.text_a for e in part]
        b = [e.text_b for e in part] if task.text_b is not None else None
        enc = tokenizer(a, b, truncation="longest_first" if b is not None else True,
                        max_length=max_seq_length, padding="max_length",
                        return_token_type_ids=True, return_attention_mask=True,
                        return_tensors="pt")
        rows = slice(start, start + len(part))
        ids[rows] = enc["input_ids"].to(torch.int32)
        types[rows] = enc["token_type_ids"].to(torch.uint8)
        lengths[rows] = enc["attention_mask"].sum(dim=1)
    if task.is_regression:
        labels = torch.tensor([float(e.label) for e in examples], dtype=torch.float32)
    else:
        index = {label: i for i, label in enumerate(task.labels)}
        labels = torch.tensor([index[e.label] for e in examples], dtype=torch.long)
    return Features(ids, types, lengths, labels)
