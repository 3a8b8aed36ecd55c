"""What a task score means: each task's chance level and majority-class rate, and the flags the
summary puts on a score at chance (AT CHANCE, AT MAJORITY) or on a classifier that gives one
class to nearly all of the dev set (COLLAPSED)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..tasks import canonical_task, is_squad
from ..tasks import glue, squad
from ..tasks.metrics import best_key, squad_v1_evaluate, squad_v2_evaluate

AT_CHANCE = "AT CHANCE"
AT_MAJORITY = "AT MAJORITY"
COLLAPSED = "COLLAPSED"
CHANCE_MARGIN = 2.0     # points (0-100 scale): a score this close to chance says nothing
COLLAPSE_SHARE = 0.95   # a classifier giving one class to this share of the dev set collapsed


def chance_flags(score: float, chance: float | None, majority: float | None,
                 margin: float = CHANCE_MARGIN) -> list[str]:
    """["AT CHANCE"] when `score` is at most `margin` points above `chance` (or below it);
    else ["AT MAJORITY"] when it is at most `margin` above the majority-class rate (what
    predicting the commonest dev label scores); else []. All on the 0-100 scale; None: unknown."""
    if chance is not None and score <= chance + margin:
        return [AT_CHANCE]
    if majority is not None and score <= majority + margin:
        return [AT_MAJORITY]
    return []


def collapse_flag(pred_counts: Mapping[Any, int] | Sequence[int],
                  share: float = COLLAPSE_SHARE) -> str | None:
    """"COLLAPSED" when one class holds at least `share` of the predictions, else None."""
    counts = list(pred_counts.values() if isinstance(pred_counts, Mapping) else pred_counts)
    total = sum(counts)
    if total <= 0:
        raise ValueError("no predictions to judge")
    return COLLAPSED if max(counts) >= share * total else None


@dataclass(frozen=True)
class TaskLevels:
    """What a task's dev score means: chance and the majority-class rate (0-100, None where
    unknown or undefined), and how chance was obtained."""

    task: str
    metric: str
    chance: float | None
    chance_note: str
    majority: float | None = None
    dev_examples: int | None = None

    def flags(self, score: float) -> list[str]:
        return chance_flags(score, self.chance, self.majority)


def task_levels(task: str, data_dir: str | os.PathLike | None = None) -> TaskLevels:
    """Chance and majority-class rate of `task`, from its dev file (read with the evaluator's
    task readers) when `data_dir` is given.

    Classification scored by accuracy: chance = 100 / labels, majority = the commonest dev
    label's share. MCC (CoLA) and correlation (STS-B): a constant prediction scores 0. SQuAD:
    the better of two trivial answers, the first word of the context and the commonest training
    answer (and for v2.0 the empty answer), scored with the official script."""
    task = canonical_task(task)
    if is_squad(task):
        if data_dir is None:
            return TaskLevels(task, "f1", None, "n/a (no --task_data)")
        return _squad_levels(task, Path(data_dir))
    spec = glue.GLUE[task]
    metric = best_key(task)
    if spec.is_regression:
        return TaskLevels(task, metric, 0.0, "constant prediction (correlation 0)")
    if metric == "mcc":
        chance, note = 0.0, "constant prediction (MCC 0)"
    else:
        chance, note = 100.0 / spec.num_labels, f"1/{spec.num_labels} labels"
    if data_dir is None:
        return TaskLevels(task, metric, chance, note)
    labels = [e.label for e in glue.read_examples(spec, data_dir, "dev")]
    top = max(labels.count(k) for k in spec.labels)
    majority = 0.0 if metric == "mcc" else 100.0 * top / len(labels)
    return TaskLevels(task, metric, chance, note, majority, len(labels))


def _squad_levels(task: str, data_dir: Path) -> TaskLevels:
    v2 = task == "squad2"
    dev = squad.read_squad(data_dir / squad.DEV_FILES[task], False, v2)
    train = squad.read_squad(data_dir / squad.TRAIN_FILES[task], True, v2)
    answers = [e.answers[0] for e in train if e.answers]
    common = max(sorted(set(answers)), key=answers.count) if answers else ""
    gold = squad.gold_answers(dev)
    score = ((lambda p: squad_v2_evaluate(gold, p)["f1"]) if v2
             else (lambda p: squad_v1_evaluate(gold, p)["f1"]))
    trials = {"first context word": score({e.qas_id: (e.context.split() or [""])[0] for e in dev}),
              f"commonest training answer {common!r}": score({e.qas_id: common for e in dev})}
    if v2:
        trials["no answer"] = score({e.qas_id: "" for e in dev})
    name = max(trials, key=trials.get)
    note = "trivial answer: " + "; ".join(f"{k} F1 {v:.2f}" for k, v in trials.items())
    return TaskLevels(task, "f1", trials[name], note, None, len(dev))


def score_flags(scores: Mapping[str, float],
                levels: Mapping[str, TaskLevels]) -> dict[str, list[str]]:
    """`chance_flags` of every score whose task has known levels."""
    return {t: levels[t].flags(v) for t, v in scores.items() if t in levels}


def all_at_chance(scores: Mapping[str, float], levels: Mapping[str, TaskLevels]) -> bool:
    """Every score of an arch with a known chance level is AT CHANCE (and there is one)."""
    known = [t for t in scores if t in levels and levels[t].chance is not None]
    return bool(known) and all(AT_CHANCE in levels[t].flags(scores[t]) for t in known)
