"""The summary as Markdown (`summary.md`, printed too): tables readable in a terminal."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..arch import Arch
from .chance import COLLAPSE_SHARE, TaskLevels
from .models import DevPredictions
from .stage_effect import stage_effect_lines
from .timing import BACKEND_NAMES, DEPLOY_BACKENDS, RUNTIME_OF_BACKEND, SPEEDUP_MATCH

if TYPE_CHECKING:  # summary.py imports this module
    from .summary import Summary

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


def format_summary(s: Summary, links_from: str | os.PathLike | None = None) -> str:
    """The summary as Markdown tables (readable in a terminal as well); links to figures are
    relative to `links_from` (the directory of summary.md) when given."""
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
              + f", timed here under the latency protocol (1 thread, batch 1 x 128 tokens, "
              f"median) with {BACKEND_NAMES.get(s.runtime, s.runtime)}, the runtime the search "
              f"targeted (its latency predictor's timings). Scores within 2 points of chance "
              f"are flagged AT CHANCE (chance and majority-class rates of each task are listed "
              f"below).", "",
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
    if s.supernet_stage:
        lines += stage_effect_lines(s.supernet_stage, s.supernet_stage_note or "", s.levels) + [""]
    elif s.supernet_stage_note:  # no stage ran: what the search sliced instead
        lines += [f"The supernet stage: {s.supernet_stage_note}.", ""]
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
    if s.latency_vs_score is not None:
        lines += [""] + _latency_section(s, links_from)
    if s.plots:
        lines += ["", "Plots: " + ", ".join(s.plots)]
    return "\n".join(lines) + "\n"


def _latency_section(s: Summary, links_from: str | os.PathLike | None) -> list[str]:
    """A paragraph on the fitness-against-latency figure (its data: summary.json's
    `latency_vs_score`), linked when it was drawn."""
    d = s.latency_vs_score
    n = len(d.points)
    if s.latency_plot is None:
        head = "Fitness against latency (summary.json `latency_vs_score`):"
    else:
        link = (s.latency_plot if links_from is None
                else os.path.relpath(s.latency_plot, links_from))
        head = f"Fitness against latency: [{Path(link).name}]({link}) shows"
    text = (f"{head} every arch the search evaluated ({n}), its proxy fitness against its "
            f"predicted latency (measured for the chosen and default-ratio archs), the "
            f"reference `{d.reference}` ({d.reference_ms:.2f} ms measured)")
    if d.window_ms is not None:
        lo, hi = d.window_ms
        inside = sum(lo <= p.predicted_ms <= hi for p in d.points)
        text += (f", the target window {lo:.2f}-{hi:.2f} ms ({d.speedup:g}x; {inside} of {n} "
                 f"archs predicted inside it)")
    return [text + ", and the final scores of the chosen and default-ratio archs."]


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


def _deployment_table(s: Summary) -> list[str]:
    d = s.deployed
    torch_ms = d.latency_ms["torch"]
    head = [BACKEND_NAMES[b] + (" (searched for, shipped)" if b == d.searched else "")
            for b in DEPLOY_BACKENDS]
    lat = [f"{d.latency_ms[b]:.2f} ms" + ("" if b == "torch" else
                                          f" ({d.latency_ms[b] / torch_ms:.2f}x torch's)")
           for b in DEPLOY_BACKENDS]
    level = s.levels.get(d.task)
    score = [_scored(d.scores[r], level.flags(d.scores[r]) if level else [])
             if r in d.scores else "-" for r in (RUNTIME_OF_BACKEND[b] for b in DEPLOY_BACKENDS)]
    lines = [f"`{_short(s.chosen['arch'])}` as deployed (`submodel_extractor.py --onnx --int8`, "
             f"scored by `superbert_run_en_classifier.py --onnx --int8`):", "",
             "| | " + " | ".join(head) + " |", "|---|---|---|---|",
             "| latency (1 thread, batch 1 x 128) | " + " | ".join(lat) + " |"]
    if d.base_ms:
        base = _short(s.base_arch)
        lines.append(f"| measured speedup vs `{base}` | "
                     + " | ".join(_fmt(d.speedup(b)) + "x" if d.speedup(b) else "-"
                                  for b in DEPLOY_BACKENDS) + " |")
        lines.append(f"| predicted speedup vs `{base}` | "
                     + " | ".join(f"{d.predicted_speedup:.2f}x"
                                  if b == d.searched and d.predicted_speedup else "-"
                                  for b in DEPLOY_BACKENDS) + " |")
    lines.append(f"| {d.task} dev score | " + " | ".join(score) + " |")
    lines += ["", _shipped_line(s)]
    return lines


def _shipped_line(s: Summary) -> str:
    """What was shipped, and whether its measured speedup kept the search's promise."""
    d = s.deployed
    name = BACKEND_NAMES.get(d.searched, d.searched)
    where = (f"`{d.shipped}`" if d.shipped else
             "the fine-tuned torch model" if d.searched == "torch" else "(no export found)")
    text = (f"The search targeted {name} (its latency predictor was fitted on {name} timings); "
            f"shipped: {where}.")
    measured = d.speedup(d.searched)
    if measured and d.predicted_speedup:
        gap = measured / d.predicted_speedup - 1
        text += (f" Speedup in it: predicted {d.predicted_speedup:.2f}x, measured {measured:.2f}x "
                 f"({100 * gap:+.1f}%, {'within' if abs(gap) <= SPEEDUP_MATCH else 'NOT within'} "
                 f"{100 * SPEEDUP_MATCH:.0f}%).")
    return text
