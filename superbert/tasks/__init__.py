"""Downstream tasks: the GLUE and SQuAD readers, features and metrics, and the per-task defaults.

Task names are the original evaluator's: cola mnli mnli-mm mrpc sst-2 sts-b qqp qnli rte wnli
squad1 squad2, plus `squad` = `squad1` (the seed README's spelling, which the original rejected).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

GLUE_TASKS = ("cola", "mnli", "mnli-mm", "mrpc", "sst-2", "sts-b", "qqp", "qnli", "rte", "wnli")
SQUAD_TASKS = ("squad1", "squad2")
TASKS = GLUE_TASKS + SQUAD_TASKS
ALIASES = {"squad": "squad1"}


@dataclass(frozen=True)
class TaskDefaults:
    """The original's `default_params` row of a task; None = the command-line default."""

    num_train_epochs: float
    max_seq_length: int
    learning_rate: float
    eval_step: int
    train_batch_size: int | None = None


# The original's table (reference 1.6). cola's "batch_size" key was never read, so cola uses
# --train_batch_size. wnli and squad2 had no row: ours are the rte row's shape for wnli (flag
# defaults for epochs/lr, evaluation every 10 steps) and the squad1 row for squad2.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "cola": TaskDefaults(10, 64, 1e-5, 50),
    "mnli": TaskDefaults(4, 128, 3e-5, 500, 32),
    "mnli-mm": TaskDefaults(4, 128, 3e-5, 500, 32),
    "mrpc": TaskDefaults(10, 128, 2e-5, 10),
    "sst-2": TaskDefaults(4, 64, 2e-5, 100, 32),
    "sts-b": TaskDefaults(10, 128, 3e-5, 10),
    "qqp": TaskDefaults(5, 128, 2e-5, 500),
    "qnli": TaskDefaults(10, 128, 2e-5, 500),
    "rte": TaskDefaults(10, 128, 2e-5, 10),
    "wnli": TaskDefaults(3, 128, 5e-5, 10),
    "squad1": TaskDefaults(4, 384, 3e-5, 500, 16),
    "squad2": TaskDefaults(4, 384, 3e-5, 500, 16),
}


def canonical_task(name: str) -> str:
    """The registry name of a task (lower case, aliases resolved); unknown names are an error."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TASKS:
        raise UserError(f"unknown task {name!r}: expected one of {', '.join(TASKS)} "
                        f"(or squad = squad1)")
    return key


def is_squad(task: str) -> bool:
    return task in SQUAD_TASKS
