"""The end-of-pipeline report: the chosen arch, its predicted and measured speedup, task scores,
parameter count, held-out MLM loss before and after further training, and the search plot.

Everything here reads the files the pipeline stages wrote (generation `.cands` files,
`subbert.results`, `time.pt`, model directories, pre-training data); nothing is re-derived
from a stage's internals. The measured speedup is timed here, in one process, under the
latency protocol of `superbert.latency` (base and chosen arch interleaved, so both see the same
machine state); it is never the predictor's number.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from . import finetune
from .arch import Arch, Scheme, arch_of_config
from .data import MaskingCollator, PretrainingDataset
from .errors import UserError
from .hf import load_config, load_model, load_tokenizer, read_vocab, resolve_model_dir
from .hf import _do_lower_case as saved_do_lower_case
from .io import atomic_path, atomic_write_text
from .latency import (BERT_BASE, LatencyPredictor, Speedups, Timer, TimingProtocol,
                      time_against_reference)
from .modeling import AutoTinyBertForSequenceClassification
from .results import Evaluated, best_arch, evaluated_archs, read_results
from .tasks import canonical_task, is_squad
from .tasks import glue, squad
from .tasks.metrics import best_key, squad_v1_evaluate, squad_v2_evaluate

logger = logging.getLogger(__name__)


# ---- search progress ----------------------------------------------------------------------------
def plot_search_progress(path: str | os.PathLike, evaluated: Sequence[Evaluated]) -> Path:
    """Fitness of every evaluated arch per generation, with the best-so-far line."""
    from matplotlib.figure import Figure  # imported here: most callers never plot

    gens = sorted({e.generation for e in evaluated})
    fig = Figure(figsize=(6, 4))  # no pyplot: no global backend or figure registry to manage
    ax = fig.subplots()
    xs = [e.generation for e in evaluated]
    ax.scatter(xs, [e.fitness for e in evaluated], alpha=0.6, label="evaluated arch")
    best, running = [], -math.inf
    for g in gens:
        running = max(running, max(e.fitness for e in evaluated if e.generation == g))
        best.append(running)
    ax.plot(gens, best, "r-o", label="best so far")
    ax.set_xlabel("generation (1 = Random, then Evolved)")
    ax.set_ylabel("fitness (mean task score, 0-100)")
    ax.set_xticks(gens)
    ax.set_title("search progress")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    return path


# ---- held-out MLM loss --------------------------------------------------------------------------
@torch.inference_mode()
def heldout_mlm_loss(model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                     max_seq_length: int = 128, masked_lm_prob: float = 0.15, seed: int = 12345,
                     batch_size: int = 32, max_sequences: int | None = None) -> tuple[float, int]:
    """(mean masked-token cross-entropy, number of masked tokens) of a model at its own arch.

    The masks are a pure function of `seed` and the sequence index, so two models compared on
    the same data see exactly the same masked positions and replacements.
    """
    model_dir = resolve_model_dir(str(model_dir), need_weights=True)
    model = load_model(model_dir).eval()
    vocab_file = model_dir / "vocab.txt"
    vocab = read_vocab(vocab_file)
    ids = {t: i for i, t in enumerate(vocab)}
    specials = [ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in ids]
    dataset = PretrainingDataset(data_dir, max_seq_length, vocab_file=str(vocab_file))
    collator = MaskingCollator(len(vocab), ids["[MASK]"], ids["[PAD]"], specials, max_seq_length,
                               masked_lm_prob=masked_lm_prob, seed=seed)
    n = len(dataset) if max_sequences is None else min(len(dataset), max_sequences)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = collator([(i, dataset[i][1]) for i in range(start, min(n, start + batch_size))])
        labels = batch["labels"]
        k = int((labels != -100).sum())
        if k == 0:
            continue
        hidden = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        total += float(model.masked_lm_loss(hidden, labels)) * k
        count += k
    if count == 0:
        raise UserError(f"no masked tokens in {data_dir}: is it empty?")
    return total / count, count


# ---- speedup, measured --------------------------------------------------------------------------
def measure_latencies(config: Any, scheme: str | Scheme, archs: Sequence[Arch], base: Arch,
                      threads: int = 1, infer_cnt: int = 10, rounds: int = 3) -> Speedups:
    """`archs` and `base` timed under the latency protocol by the one speedup measurement
    (`latency.time_against_reference`: the base brackets every round), in one process."""
    timer = Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt))
    return time_against_reference(timer, archs, base, rounds)


def measure_speedup(config: Any, scheme: str | Scheme, arch: Arch, base: Arch, threads: int = 1,
                    infer_cnt: int = 10, rounds: int = 3) -> tuple[float, float]:
    """(base ms, arch ms) of one arch (`measure_latencies`)."""
    t = measure_latencies(config, scheme, [arch], base, threads, infer_cnt, rounds)
    return t.reference_ms, t.arch_ms[0]


# ---- is a score above chance? -------------------------------------------------------------------
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


@dataclass(frozen=True)
class DevPredictions:
    """A saved fine-tuned classifier run over its task's dev set again."""

    model_dir: str
    seed: int | None
    counts: dict[str, int]   # dev predictions per label (every label listed)
    rescored: float          # its score on the dev set now (0-100), to check the saved model

    @property
    def flag(self) -> str | None:
        return collapse_flag(self.counts)


def predict_dev(model_dir: str | os.PathLike, task: str, data_dir: str | os.PathLike,
                seed: int | None = None, max_seq_length: int | None = None) -> DevPredictions:
    """Predict the dev set of `task` with a fine-tuned model (`--save_best_model` output)
    through the evaluator's own path: its task config (per-task defaults), data loading and
    tokenization, and its dev forward pass and GLUE scoring."""
    task = canonical_task(task)
    if is_squad(task):
        raise UserError(f"{task}: the predicted-class check is for classification tasks")
    model_dir = resolve_model_dir(str(model_dir), need_weights=True)
    common = {f.name: f.default for f in fields(finetune.RunConfig)
              if f.name in finetune.COMMON_KEYS}
    common["max_train_examples"] = 1  # only the dev set is used; read one training example
    explicit = {k: None for k in finetune.TABLE_KEYS}
    explicit["max_seq_length"] = max_seq_length
    cfg = finetune.resolve_task_config(task, str(data_dir), explicit, common)
    tokenizer = load_tokenizer(model_dir, saved_do_lower_case(model_dir))
    data = finetune.load_task_data(cfg, tokenizer)
    model = load_model(model_dir, AutoTinyBertForSequenceClassification)
    if model.config.num_labels != data.num_labels:
        raise UserError(f"{model_dir} has {model.config.num_labels} labels but {task} has "
                        f"{data.num_labels}")
    finetune.check_sequence_lengths((cfg,), model.config)
    dev = finetune._forward_dev(model, data.dev, False, cfg.eval_batch_size,
                                torch.device("cpu"), False)
    metrics = finetune._glue_scores(task, data.num_labels, dev, data.dev)
    preds = np.concatenate([o[0] for o in dev.outputs]).argmax(axis=1)
    labels = glue.GLUE[task].labels
    counts = {name: int((preds == i).sum()) for i, name in enumerate(labels)}
    return DevPredictions(str(model_dir), seed, counts, 100.0 * metrics[best_key(task)])


def load_with_transformers(model_dir: str | os.PathLike) -> tuple[str, int]:
    """Load a model directory through transformers' Auto classes, as a user would; returns
    (class name, parameters of the encoder: embeddings + layers + pooler, without dense_fit)."""
    hf_logging.disable_progress_bar()
    mlm = AutoModelForMaskedLM.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    with torch.inference_mode():
        out = mlm(torch.tensor([[101, 7592, 103, 102]]))
    if not torch.isfinite(out.logits).all():
        raise UserError(f"{model_dir}: the transformers-loaded model gives non-finite outputs")
    encoder = mlm.base_model
    params = sum(p.numel() for n, p in encoder.named_parameters() if "dense_fit" not in n)
    return type(mlm).__name__, params


# ---- the summary --------------------------------------------------------------------------------
@dataclass
class Summary:
    chosen: dict[str, Any]  # arch, generation, scores, fitness, flags (per task)
    base_arch: str
    predicted_ms: float
    predicted_base_ms: float | None
    measured_ms: float
    measured_base_ms: float
    params: int
    params_transformers: int | None
    transformers_class: str | None
    mlm_loss_inherited: float | None
    mlm_loss_further: float | None
    mlm_masked_tokens: int | None
    generations: list[dict[str, Any]]
    top: list[dict[str, Any]]
    plots: list[str] = field(default_factory=list)
    final_scores: dict[str, float] | None = None  # the further-trained model, fine-tuned
    levels: dict[str, TaskLevels] = field(default_factory=dict)  # chance per task
    measured_bert_base_ms: float | None = None  # BERT-base, timed with the same timer
    final_flags: dict[str, list[str]] | None = None
    final_predictions: dict[str, list[DevPredictions]] | None = None
    default: dict[str, Any] | None = None  # the default-ratio arch, see `Comparison`
    deployed: Deployment | None = None  # the chosen arch through ONNX Runtime

    @property
    def predicted_speedup(self) -> float | None:
        return None if self.predicted_base_ms is None else self.predicted_base_ms / self.predicted_ms

    @property
    def measured_speedup(self) -> float:
        return self.measured_base_ms / self.measured_ms

    @property
    def measured_speedup_bert_base(self) -> float | None:
        if self.measured_bert_base_ms is None:
            return None
        return self.measured_bert_base_ms / self.measured_ms

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["predicted_speedup"] = self.predicted_speedup
        d["measured_speedup"] = self.measured_speedup
        d["measured_speedup_bert_base"] = self.measured_speedup_bert_base
        # each saved model's collapse flag beside its counts
        for owner, src in ((d, self.final_predictions),
                           (d["default"], (self.default or {}).get("final_predictions"))):
            if src is not None:
                owner["final_predictions"] = {t: [{**asdict(p), "flag": p.flag} for p in ps]
                                              for t, ps in src.items()}
        return d


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _scored(score: float | None, flags: Sequence[str] = ()) -> str:
    """A score with its flags in bold: `33.00 **AT CHANCE**`."""
    return _fmt(score) + "".join(f" **{f}**" for f in flags)


def _short(arch: str) -> str:
    return Arch.parse(arch).short()


def _predicted_text(preds: Sequence[DevPredictions] | None, note: str) -> str:
    if not preds:
        return note
    parts = []
    for p in preds:
        counts = ", ".join(f"{k} {v}" for k, v in p.counts.items())
        seed = "" if p.seed is None else f"seed {p.seed}: "
        parts.append(f"{seed}{counts}" + (f" **{p.flag}**" if p.flag else ""))
    return "; ".join(parts)


def _levels_table(levels: dict[str, TaskLevels]) -> list[str]:
    lines = ["| task | metric | dev examples | chance | majority class | chance is |",
             "|---|---|---|---|---|---|"]
    for t in sorted(levels):
        lv = levels[t]
        lines.append(f"| {t} | {lv.metric} | {'-' if lv.dev_examples is None else lv.dev_examples}"
                     f" | {_fmt(lv.chance) if lv.chance is not None else 'n/a'} | "
                     f"{_fmt(lv.majority) if lv.majority is not None else 'n/a'} | "
                     f"{lv.chance_note} |")
    return lines


def _final_table(title: str, scores: dict[str, float], flags: dict[str, list[str]],
                 preds: dict[str, list[DevPredictions]] | None,
                 levels: dict[str, TaskLevels], notes: dict[str, str]) -> list[str]:
    lines = [f"| {title} | score | chance | majority class | predicted classes (dev) |",
             "|---|---|---|---|---|"]
    for t in sorted(scores):
        lv = levels.get(t)
        chance = lv.chance if lv else None
        majority = lv.majority if lv else None
        lines.append(f"| {t} | {_scored(scores[t], flags.get(t, []))} | "
                     f"{_fmt(chance) if chance is not None else 'n/a'} | "
                     f"{_fmt(majority) if majority is not None else 'n/a'} | "
                     f"{_predicted_text((preds or {}).get(t), notes.get(t, 'n/a'))} |")
    return lines


def _verdicts(s: Summary) -> list[str]:
    """What a reader must know before trusting the numbers: scores at chance, collapsed
    classifiers."""
    out = []
    n = len(s.generations) and sum(g["evaluated"] for g in s.generations)
    at = sum(g.get("at_chance", 0) for g in s.generations)
    if n and at == n:
        out.append(f"**Warning: all {n} archs the search evaluated scored at chance on every "
                   f"task: the search ranked noise, and the chosen arch is arbitrary.**")
    elif at:
        out.append(f"Note: {at} of {n} archs the search evaluated scored at chance on every task.")
    for who, flags, preds in (("the chosen arch's final model", s.final_flags, s.final_predictions),
                              ("the default-ratio arch's final model",
                               (s.default or {}).get("final_flags"),
                               (s.default or {}).get("final_predictions"))):
        chance = sorted(t for t, f in (flags or {}).items() if f)
        collapsed = sorted(t for t, ps in (preds or {}).items() if any(p.flag for p in ps))
        if chance:
            out.append(f"**Warning: {who} is at chance (or at the majority-class rate) on "
                       f"{', '.join(chance)}.**")
        if collapsed:
            out.append(f"**Warning: {who} predicts one class for >= "
                       f"{100 * COLLAPSE_SHARE:.0f}% of the dev set on {', '.join(collapsed)} "
                       f"(collapsed).**")
    return out


def format_summary(s: Summary) -> str:
    """The summary as Markdown tables (readable in a terminal as well)."""
    tasks = sorted(s.chosen["scores"])
    flags = s.chosen.get("flags", {})
    base = _short(s.base_arch)
    bb = s.measured_speedup_bert_base
    lines = ["## AutoTinyBERT quickstart summary", ""]
    verdicts = _verdicts(s)
    if verdicts:
        lines += [f"- {v}" for v in verdicts] + [""]
    lines += [f"Speedups are relative to the base arch `{base}`"
              + (" and to BERT-base" if bb is not None else "")
              + ", timed here under the latency protocol (1 thread, batch 1 x 128 tokens, "
              "median). Scores within 2 points of chance are flagged AT CHANCE (chance and "
              "majority-class rates of each task are listed below).", "",
              "| arch | params | predicted speedup | measured speedup | "
              + ("vs BERT-base | " if bb is not None else "")
              + " | ".join(tasks) + " | fitness |",
              "|---|---|---|---|" + ("---|" if bb is not None else "") + "---|" * len(tasks)
              + "---|",
              f"| `{_short(s.chosen['arch'])}` (chosen) | {s.params:,} | "
              f"{_fmt(s.predicted_speedup)}x ({s.predicted_ms:.2f} ms) | "
              f"{s.measured_speedup:.2f}x ({s.measured_ms:.2f} ms) | "
              + (f"{bb:.2f}x ({s.measured_bert_base_ms:.2f} ms) | " if bb is not None else "")
              + " | ".join(_scored(s.chosen["scores"][t], flags.get(t, [])) for t in tasks)
              + f" | {s.chosen['fitness']:.2f} |", ""]
    if s.levels:
        lines += _levels_table(s.levels) + [""]
    if s.params_transformers is not None:
        lines += [f"Loaded with transformers as `{s.transformers_class}` "
                  f"(`trust_remote_code=True`): {s.params_transformers:,} encoder parameters.", ""]
    if s.final_scores:
        lines += _final_table(f"`{_short(s.chosen['arch'])}` further-trained, fine-tuned",
                              s.final_scores, s.final_flags or {}, s.final_predictions,
                              s.levels, s.chosen.get("prediction_notes", {})) + [""]
    if s.default is not None:
        lines += _comparison_table(s) + [""]
        if s.default.get("final_scores"):
            lines += _final_table(f"`{_short(s.default['arch'])}` (default ratios) "
                                  "further-trained, fine-tuned", s.default["final_scores"],
                                  s.default["final_flags"] or {}, s.default["final_predictions"],
                                  s.levels, s.default.get("prediction_notes", {})) + [""]
    if s.deployed is not None:
        lines += _deployment_table(s) + [""]
    if s.mlm_loss_further is not None:
        lines += ["| MLM loss on held-out chapters | inherited sub-model | further-trained |",
                  "|---|---|---|",
                  f"| masked-token cross-entropy ({s.mlm_masked_tokens:,} tokens) | "
                  f"{_fmt(s.mlm_loss_inherited, '.4f')} | {_fmt(s.mlm_loss_further, '.4f')} |", ""]
    lines += ["| generation | archs evaluated | at chance on every task | best fitness | "
              "best so far |", "|---|---|---|---|---|"]
    lines += [f"| {g['generation']} | {g['evaluated']} | {g.get('at_chance', '-')}"
              f"{' **AT CHANCE**' if g.get('at_chance') == g['evaluated'] else ''}"
              f" | {g['best']:.2f} | {g['best_so_far']:.2f} |" for g in s.generations]
    lines += ["", "Top archs by fitness:", "", "| arch | generation | " + " | ".join(tasks)
              + " | fitness |", "|---|---|" + "---|" * len(tasks) + "---|"]
    lines += [f"| `{_short(t['arch'])}` | {t['generation']} | "
              + " | ".join(_scored(t["scores"].get(k), t.get("flags", {}).get(k, []))
                           if k in t["scores"] else "-" for k in tasks)
              + f" | {t['fitness']:.2f} |" for t in s.top]
    if s.plots:
        lines += ["", "Plots: " + ", ".join(s.plots)]
    return "\n".join(lines) + "\n"


LATENCY_MATCH = 0.05  # the default-ratio arch counts as equally fast within 5% measured


def _comparison_table(s: Summary) -> list[str]:
    """The chosen arch beside the default-ratio arch of the same predicted latency."""
    d = s.default
    if d["arch"] == s.chosen["arch"]:
        return [f"The search chose an arch with BERT's default ratios (FFN = 4 x hidden, qkv = "
                f"hidden) itself, `{_short(d['arch'])}`: there is no other default-ratio arch "
                f"of its latency to compare with."]
    base = _short(s.base_arch)
    rows = [("arch", f"`{_short(s.chosen['arch'])}`", f"`{_short(d['arch'])}`"),
            ("params", f"{s.params:,}", f"{d['params']:,}"),
            ("measured latency", f"{s.measured_ms:.2f} ms", f"{d['measured_ms']:.2f} ms"),
            (f"measured speedup vs `{base}`", f"{s.measured_speedup:.2f}x",
             f"{s.measured_base_ms / d['measured_ms']:.2f}x")]
    if s.measured_bert_base_ms is not None:
        rows.append(("measured speedup vs BERT-base", f"{s.measured_speedup_bert_base:.2f}x",
                     f"{s.measured_bert_base_ms / d['measured_ms']:.2f}x"))
    d_predicted = (None if s.predicted_base_ms is None
                   else s.predicted_base_ms / d["predicted_ms"])
    rows.append((f"predicted speedup vs `{base}`", f"{_fmt(s.predicted_speedup)}x",
                 f"{_fmt(d_predicted)}x"))
    ours, theirs = s.final_scores or {}, d.get("final_scores") or {}
    for t in sorted(set(ours) | set(theirs)):
        rows.append((f"final {t}",
                     _scored(ours.get(t), (s.final_flags or {}).get(t, [])) if t in ours else "-",
                     _scored(theirs.get(t), (d.get("final_flags") or {}).get(t, []))
                     if t in theirs else "-"))
    common = sorted(set(ours) & set(theirs))
    if common:
        rows.append(("final mean score", f"{sum(ours[t] for t in common) / len(common):.2f}",
                     f"{sum(theirs[t] for t in common) / len(common):.2f}"))
    if s.mlm_loss_further is not None or d.get("mlm_loss_further") is not None:
        rows.append(("held-out MLM loss, further-trained", _fmt(s.mlm_loss_further, ".4f"),
                     _fmt(d.get("mlm_loss_further"), ".4f")))
    gap = d["measured_ms"] / s.measured_ms - 1
    lines = ["The chosen arch beside the default-ratio arch (BERT's FFN = 4 x hidden, qkv = "
             "hidden, on the search grid) whose predicted latency is closest:", "",
             "| | chosen (searched) | default ratios |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"Measured latency of the default-ratio arch: {100 * gap:+.1f}% of the chosen "
              f"arch's ({'within' if abs(gap) <= LATENCY_MATCH else 'NOT within'} "
              f"{100 * LATENCY_MATCH:.0f}%)."]
    return lines


def generation_table(evaluated: Sequence[Evaluated],
                     levels: Mapping[str, TaskLevels] | None = None) -> list[dict[str, Any]]:
    """Per generation: archs evaluated, best fitness, best so far; with `levels`, also how
    many archs scored at chance on every task (`at_chance`)."""
    rows, running = [], -math.inf
    for g in sorted({e.generation for e in evaluated}):
        gen = [e for e in evaluated if e.generation == g]
        fits = [e.fitness for e in gen]
        running = max(running, max(fits))
        row = {"generation": g, "evaluated": len(fits), "best": max(fits), "best_so_far": running}
        if levels is not None:
            row["at_chance"] = sum(all_at_chance(e.scores, levels) for e in gen)
        rows.append(row)
    return rows


def score_flags(scores: Mapping[str, float],
                levels: Mapping[str, TaskLevels]) -> dict[str, list[str]]:
    """`chance_flags` of every score whose task has known levels."""
    return {t: levels[t].flags(v) for t, v in scores.items() if t in levels}


def all_at_chance(scores: Mapping[str, float], levels: Mapping[str, TaskLevels]) -> bool:
    """Every score of an arch with a known chance level is AT CHANCE (and there is one)."""
    known = [t for t in scores if t in levels and levels[t].chance is not None]
    return bool(known) and all(AT_CHANCE in levels[t].flags(scores[t]) for t in known)


@dataclass
class FinalEvaluation:
    """A further-trained model fine-tuned on the tasks (`--final_results`), with its saved best
    models run over the dev sets again."""

    scores: dict[str, float]
    flags: dict[str, list[str]]
    predictions: dict[str, list[DevPredictions]]
    notes: dict[str, str]  # why a task has no predictions


def final_evaluation(results_file: str | os.PathLike, arch: Arch,
                     levels: Mapping[str, TaskLevels], task_data: Mapping[str, str],
                     max_seq_length: int | None = None) -> FinalEvaluation:
    """The scores of `arch` in `results_file` (which must hold it only), their chance flags, and
    for each classification task the predicted-class counts of every seed's saved best model
    (`<dir of results_file>/<task>_seed<seed>`, as the evaluator's --save_best_model names it)."""
    final = evaluated_archs(results_file)
    if len(final) != 1 or final[0].arch != arch:
        raise UserError(f"{results_file} should hold the arch {arch.short()} only")
    scores = final[0].scores
    preds: dict[str, list[DevPredictions]] = {}
    notes: dict[str, str] = {}
    reported: dict[tuple[str, int | None], float] = {}
    for block in read_results(results_file):
        if block.runtime is None:
            reported[(block.task, block.seed)] = block.score
    for (task, seed), score in reported.items():
        if is_squad(task):
            notes[task] = "n/a (span task)"
            continue
        if task not in task_data:
            notes[task] = "n/a (no --task_data for it)"
            continue
        model_dir = Path(results_file).parent / f"{task}_seed{seed}"
        if seed is None or not (model_dir / "config.json").is_file():
            notes[task] = (f"n/a (no saved model {model_dir.name}: run the evaluation with "
                           f"--save_best_model)")
            continue
        p = predict_dev(model_dir, task, task_data[task], seed, max_seq_length)
        if abs(p.rescored - score) > 0.5:
            logger.warning("%s re-scored %.2f on %s dev, but %s reports %.2f: was the evaluation "
                           "run with another --max_seq_length or dev set?", model_dir, p.rescored,
                           task, results_file, score)
        preds.setdefault(task, []).append(p)
    return FinalEvaluation(scores, score_flags(scores, levels), preds, notes)


DEPLOY_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
RUNTIME_OF_BACKEND = {"torch": "torch", "onnxruntime": "onnxruntime-fp32",
                      "onnxruntime-int8": "onnxruntime-int8"}


@dataclass
class Deployment:
    """The chosen arch as shipped: its latency under each backend (the latency protocol) and
    one task's dev score from the fine-tuned torch model and its ONNX Runtime exports."""

    task: str
    scores: dict[str, float]       # runtime -> dev score (0-100)
    latency_ms: dict[str, float]   # backend -> ms


def deployment(deployed_results: str | os.PathLike, arch: Arch, torch_scores: Mapping[str, float],
               config: Any, scheme: Scheme, threads: int = 1, infer_cnt: int = 10) -> Deployment:
    """Read the ONNX Runtime blocks of `deployed_results` (`superbert_run_en_classifier.py
    --onnx [--int8]` of a fine-tuned `arch`) and time `arch` under every backend."""
    blocks = [b for b in read_results(deployed_results) if b.runtime is not None]
    if not blocks:
        raise UserError(f"{deployed_results} holds no ONNX Runtime results (write them with "
                        f"superbert_run_en_classifier.py --onnx)")
    tasks = {b.task for b in blocks}
    if len(tasks) != 1 or any(b.arch != arch for b in blocks):
        raise UserError(f"{deployed_results} should hold one task of the arch {arch.short()}, "
                        f"got {', '.join(sorted(tasks))} of "
                        f"{', '.join(sorted({b.arch.short() for b in blocks}))}")
    task = blocks[0].task
    scores = {"torch": torch_scores[task]} if task in torch_scores else {}
    scores |= {b.runtime: b.score for b in blocks}
    latency = {}
    for backend in DEPLOY_BACKENDS:
        with Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt,
                                                  backend=backend)) as timer:
            latency[backend] = timer.time_reference(arch).ms
    return Deployment(task, scores, latency)


def _deployment_table(s: Summary) -> list[str]:
    d = s.deployed
    torch_ms = d.latency_ms["torch"]
    head = ["torch (eager)", "ONNX Runtime FP32", "ONNX Runtime INT8"]
    lat = [f"{d.latency_ms[b]:.2f} ms" + ("" if b == "torch" else
                                          f" ({d.latency_ms[b] / torch_ms:.2f}x torch's)")
           for b in DEPLOY_BACKENDS]
    level = s.levels.get(d.task)
    score = [_scored(d.scores[r], level.flags(d.scores[r]) if level else [])
             if r in d.scores else "-" for r in (RUNTIME_OF_BACKEND[b] for b in DEPLOY_BACKENDS)]
    return [f"`{_short(s.chosen['arch'])}` as deployed (`submodel_extractor.py --onnx --int8`, "
            f"scored by `superbert_run_en_classifier.py --onnx --int8`):", "",
            "| | " + " | ".join(head) + " |", "|---|---|---|---|",
            "| latency (1 thread, batch 1 x 128) | " + " | ".join(lat) + " |",
            f"| {d.task} dev score | " + " | ".join(score) + " |"]


def build_summary(results_file: str | os.PathLike, generation_files: Sequence[str | os.PathLike],
                  supernet_dir: str | os.PathLike, time_pt: str | os.PathLike, base_arch: Arch,
                  further_dir: str | os.PathLike | None = None,
                  inherited_dir: str | os.PathLike | None = None,
                  heldout_data: str | os.PathLike | None = None, max_seq_length: int = 128,
                  heldout_sequences: int | None = None, threads: int = 1, infer_cnt: int = 10,
                  plot: str | os.PathLike | None = None,
                  extra_plots: Sequence[str] = (), top: int = 5,
                  final_results: str | os.PathLike | None = None,
                  task_data: Mapping[str, str] | None = None,
                  final_max_seq_length: int | None = None,
                  default_arch: Arch | None = None,
                  default_final_results: str | os.PathLike | None = None,
                  default_further: str | os.PathLike | None = None,
                  deployed_results: str | os.PathLike | None = None) -> Summary:
    """Gather everything the summary shows; see the module docstring.

    `task_data` maps tasks to their data directories (for chance and majority-class rates and
    the predicted-class check); `default_arch` is the default-ratio arch to compare with
    (`search.baseline.matching_default_arch`), with its own final results and further-trained
    model when given; `deployed_results` the ONNX Runtime scores of the chosen arch's
    fine-tuned model (`deployment`)."""
    task_data = {canonical_task(t): str(d) for t, d in (task_data or {}).items()}
    if (default_final_results or default_further) and default_arch is None:
        raise UserError("the default-ratio arch's results need the arch itself "
                        "(--default_arch_file)")
    evaluated = evaluated_archs(results_file, generation_files)
    chosen = best_arch(evaluated)
    config = load_config(resolve_model_dir(str(supernet_dir)))
    predictor = LatencyPredictor.load(time_pt)
    scheme = Scheme.parse(config.attention_scheme)

    tasks = {t for e in evaluated for t in e.scores}
    for path in (final_results, default_final_results):
        if path is not None:
            tasks |= {r.task for r in read_results(path)}
    levels = {t: task_levels(t, task_data.get(t)) for t in sorted(tasks)}

    if default_further is not None:
        got = arch_of_config(load_config(resolve_model_dir(str(default_further))))
        if got != default_arch:
            raise UserError(f"{default_further} holds the arch {got.short()}, not the default-"
                            f"ratio arch {default_arch.short()} of --default_arch_file")
    archs = [chosen.arch] + ([default_arch] if default_arch is not None else [])
    time_bert_base = base_arch != BERT_BASE
    if time_bert_base:
        archs.append(BERT_BASE)
    timed = measure_latencies(config, scheme, archs, base_arch, threads, infer_cnt)
    ms = dict(zip(range(len(archs)), timed.arch_ms))
    bert_base_ms = ms[len(archs) - 1] if time_bert_base else timed.reference_ms

    cls_name, hf_params = (None, None)
    if further_dir is not None:
        cls_name, hf_params = load_with_transformers(further_dir)
    loss_inh = loss_fur = tokens = None
    if heldout_data is not None and further_dir is not None and inherited_dir is not None:
        loss_inh, tokens = heldout_mlm_loss(inherited_dir, heldout_data, max_seq_length,
                                            max_sequences=heldout_sequences)
        loss_fur, _ = heldout_mlm_loss(further_dir, heldout_data, max_seq_length,
                                       max_sequences=heldout_sequences)
    plots = list(extra_plots)
    if plot is not None:
        plots.append(str(plot_search_progress(plot, evaluated)))
    ranked = sorted(evaluated, key=lambda e: -e.fitness)[:top]
    final = None
    if final_results is not None:
        final = final_evaluation(final_results, chosen.arch, levels, task_data,
                                 final_max_seq_length)
    count = lambda a: a.param_count(config.vocab_size, config.max_position_embeddings,  # noqa: E731
                                    config.type_vocab_size)
    default = None
    if default_arch is not None:
        dfinal = (final_evaluation(default_final_results, default_arch, levels, task_data,
                                   final_max_seq_length)
                  if default_final_results is not None else None)
        d_params = d_loss = None
        if default_further is not None:
            _, d_params = load_with_transformers(default_further)
            if heldout_data is not None:
                d_loss, _ = heldout_mlm_loss(default_further, heldout_data, max_seq_length,
                                             max_sequences=heldout_sequences)
        default = {"arch": str(default_arch), "params": count(default_arch),
                   "params_transformers": d_params,
                   "predicted_ms": predictor.predict_one(default_arch), "measured_ms": ms[1],
                   "final_scores": dfinal.scores if dfinal else None,
                   "final_flags": dfinal.flags if dfinal else None,
                   "final_predictions": dfinal.predictions if dfinal else None,
                   "prediction_notes": dfinal.notes if dfinal else {},
                   "mlm_loss_further": d_loss}
    deployed = None
    if deployed_results is not None:
        deployed = deployment(deployed_results, chosen.arch, final.scores if final else {},
                              config, scheme, threads, infer_cnt)
    return Summary(
        chosen={"arch": str(chosen.arch), "generation": chosen.generation,
                "scores": chosen.scores, "fitness": chosen.fitness,
                "flags": score_flags(chosen.scores, levels),
                "prediction_notes": final.notes if final else {}},
        base_arch=str(base_arch), predicted_ms=predictor.predict_one(chosen.arch),
        predicted_base_ms=predictor.base_latency_ms, measured_ms=ms[0],
        measured_base_ms=timed.reference_ms,
        params=count(chosen.arch),
        params_transformers=hf_params, transformers_class=cls_name,
        mlm_loss_inherited=loss_inh, mlm_loss_further=loss_fur, mlm_masked_tokens=tokens,
        generations=generation_table(evaluated, levels),
        top=[{"arch": str(e.arch), "generation": e.generation, "scores": e.scores,
              "fitness": e.fitness, "flags": score_flags(e.scores, levels)} for e in ranked],
        plots=plots, final_scores=final.scores if final else None, levels=levels,
        measured_bert_base_ms=bert_base_ms,
        final_flags=final.flags if final else None,
        final_predictions=final.predictions if final else None, default=default,
        deployed=deployed)


def write_summary(summary: Summary, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`summary.md` and `summary.json` under `output_dir` (atomic)."""
    out = Path(output_dir)
    md, js = out / "summary.md", out / "summary.json"
    atomic_write_text(md, format_summary(summary))
    atomic_write_text(js, json.dumps(summary.to_json(), indent=1) + "\n")
    return md, js
