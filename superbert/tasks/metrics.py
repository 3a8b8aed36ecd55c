"""Task metrics: GLUE (accuracy, F1, Matthews correlation, Pearson/Spearman) and the official
SQuAD v1.1 and v2.0 exact-match / F1.

GLUE keys are the original's (`acc`, `f1`, `acc_and_f1`, `mcc`, `pearson`, `spearmanr`,
`corr`); `best_key` says which one the evaluator reports as `best_acc` (MCC for CoLA, the mean
correlation for STS-B, accuracy elsewhere, as TinyBERT/AutoTinyBERT chose the best model).
SQuAD follows the official evaluation scripts line for line in meaning: answers normalised by
lower-casing, dropping punctuation and the articles a/an/the, and collapsing whitespace; the
max over gold answers; scores in percent. v2.0 treats a gold list with no non-empty answer as
the single answer "" (unanswerable), and an empty prediction or gold scores F1 1 only when
both are empty.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

import numpy as np


# ---- GLUE --------------------------------------------------------------------------------------
def simple_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def acc_and_f1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score  # SciPy and scikit-learn cost ~0.6 s to import: only
                                          # the tasks that need them pay it
    acc = simple_accuracy(preds, labels)
    f1 = float(f1_score(y_true=labels, y_pred=preds, zero_division=0))
    return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}


def pearson_and_spearman(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if np.ptp(preds) == 0 or np.ptp(labels) == 0:
        # A constant vector has no correlation; SciPy would warn and return NaN.
        pearson = spearman = 0.0
    else:
        from scipy.stats import pearsonr, spearmanr

        pearson = float(pearsonr(preds, labels)[0])
        spearman = float(spearmanr(preds, labels)[0])
    return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def glue_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The original's `compute_metrics` for one GLUE task."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if task == "cola":
        return {"mcc": matthews(preds, labels)}
    if task in ("mrpc", "qqp"):
        return acc_and_f1(preds, labels)
    if task == "sts-b":
        return pearson_and_spearman(preds, labels)
    if task in ("sst-2", "mnli", "mnli-mm", "qnli", "rte", "wnli"):
        return {"acc": simple_accuracy(preds, labels)}
    raise KeyError(task)


def best_key(task: str) -> str:
    """The metric the evaluator keeps the best of (and reports as best_acc)."""
    return {"cola": "mcc", "sts-b": "corr"}.get(task, "acc")


# ---- SQuAD -------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# v1.1 -------------------------------------------------------------------------------------------
def f1_score_v1(prediction: str, ground_truth: str) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def exact_match_v1(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_v1_evaluate(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Official v1.1: {qid: [gold texts]} and {qid: text} -> exact_match, f1 (percent).

    A question without a prediction scores 0 (the official script says "Unanswered question").
    """
    em = f1 = 0.0
    for qid, truths in gold.items():
        if qid not in predictions:
            continue
        pred = predictions[qid]
        em += max(exact_match_v1(pred, t) for t in truths)
        f1 += max(f1_score_v1(pred, t) for t in truths)
    n = max(len(gold), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# v2.0 -------------------------------------------------------------------------------------------
def compute_exact_v2(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1_v2(a_gold: str, a_pred: str) -> float:
    gold_toks = normalize_answer(a_gold).split()
    pred_toks = normalize_answer(a_pred).split()
    if not gold_toks or not pred_toks:
        # If either is no-answer, F1 is 1 if they agree, 0 otherwise.
        return float(gold_toks == pred_toks)
    return _token_f1(pred_toks, gold_toks)


def squad_v2_evaluate(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Official v2.0 (no na-prob threshold): exact, f1, total, and the HasAns_/NoAns_ splits."""
    exact, f1, has_ans = {}, {}, {}
    for qid, truths in gold.items():
        answers = [t for t in truths if normalize_answer(t)]
        has_ans[qid] = bool(answers)
        if not answers:
            answers = [""]
        if qid not in predictions:
            continue  # the official script prints "Missing prediction" and scores it 0
        pred = predictions[qid]
        exact[qid] = max(compute_exact_v2(a, pred) for a in answers)
        f1[qid] = max(compute_f1_v2(a, pred) for a in answers)

    def mean(ids: list[str]) -> dict[str, float]:
        n = max(len(ids), 1)
        return {"exact": 100.0 * sum(exact.get(q, 0) for q in ids) / n,
                "f1": 100.0 * sum(f1.get(q, 0.0) for q in ids) / n, "total": len(ids)}

    out = mean(list(gold))
    has = [q for q, h in has_ans.items() if h]
    no = [q for q, h in has_ans.items() if not h]
    if has:
        out.update({f"HasAns_{k}": v for k, v in mean(has).items()})
    if no:
        out.update({f"NoAns_{k}": v for k, v in mean(no).items()})
    return out
