"""The end-of-pipeline summary: the chosen arch, its predicted and measured speedup, task
scores, parameter count, held-out MLM loss before and after further training, the default-ratio
arch beside it, and the plots.

Everything here reads the files the pipeline stages wrote (generation `.cands` files,
`subbert.results`, `time.pt`, model directories, pre-training data); nothing is re-derived
from a stage's internals. The measured speedup is timed here (`timing`), with the runtime the
search targeted (the backend time.pt's latencies were timed with); it is never the predictor's
number.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..arch import Arch, Scheme, arch_of_config
from ..errors import UserError
from ..hf import load_config, resolve_model_dir
from ..io import atomic_write_text
from ..latency import BERT_BASE, LatencyPredictor
from ..results import Evaluated, best_arch, evaluated_archs, read_results
from ..search.window import read_window
from ..tasks import canonical_task
from .chance import TaskLevels, all_at_chance, score_flags, task_levels
from .markdown import format_summary
from .models import (DevPredictions, final_evaluation, heldout_mlm_loss,
                     load_with_transformers)
from .plots import LatencyScores, latency_scores, plot_latency_vs_score, plot_search_progress
from .stage_effect import StageEffect, stage_effect
from .timing import Deployment, deployment, measure_latencies


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
    latency_vs_score: LatencyScores | None = None  # every evaluated arch, see `plots`
    latency_plot: str | None = None  # its figure
    supernet_stage: list[StageEffect] | None = None  # slices before -> after the stage
    supernet_stage_note: str | None = None  # what the stage was (steps, recipe)
    runtime: str = "torch"  # the backend of time.pt's latencies: what the search targeted

    @property
    def predicted_speedup(self) -> float | None:
        if self.predicted_base_ms is None:
            return None
        return self.predicted_base_ms / self.predicted_ms

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
        if self.latency_vs_score is not None:
            d["latency_vs_score"] = self.latency_vs_score.to_json()
        # each saved model's collapse flag beside its counts
        for owner, src in ((d, self.final_predictions),
                           (d["default"], (self.default or {}).get("final_predictions"))):
            if src is not None:
                owner["final_predictions"] = {t: [{**asdict(p), "flag": p.flag} for p in ps]
                                              for t, ps in src.items()}
        return d


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


def build_summary(results_file: str | os.PathLike, generation_files: Sequence[str | os.PathLike],
                  supernet_dir: str | os.PathLike, time_pt: str | os.PathLike, base_arch: Arch,
                  further_dir: str | os.PathLike | None = None,
                  inherited_dir: str | os.PathLike | None = None,
                  heldout_data: str | os.PathLike | None = None, max_seq_length: int = 128,
                  heldout_sequences: int | None = None, threads: int = 1, infer_cnt: int = 10,
                  plot: str | os.PathLike | None = None,
                  latency_plot: str | os.PathLike | None = None,
                  extra_plots: Sequence[str] = (), top: int = 5,
                  final_results: str | os.PathLike | None = None,
                  task_data: Mapping[str, str] | None = None,
                  final_max_seq_length: int | None = None,
                  default_arch: Arch | None = None,
                  default_final_results: str | os.PathLike | None = None,
                  default_further: str | os.PathLike | None = None,
                  deployed_results: str | os.PathLike | None = None,
                  stage_results: tuple[str, str] | None = None,
                  stage_note: str | None = None) -> Summary:
    """Gather everything the summary shows; see the module docstring.

    `task_data` maps tasks to their data directories (for chance and majority-class rates and
    the predicted-class check); `default_arch` is the default-ratio arch to compare with
    (`search.baseline.matching_default_arch`), with its own final results and further-trained
    model when given; `deployed_results` the ONNX Runtime scores of the chosen arch's
    fine-tuned model (`deployment`); `stage_results` the same archs scored on the supernet's
    starting point and on the trained supernet (`stage_effect`: the chosen arch and the
    default-ratio arch, the narrow-hidden one, when those files hold them). `plot` and `latency_plot` are where the search-progress
    and the fitness-against-latency figures go; the latter draws the latency window the last
    generation file records (`search.window.read_window`) when it does."""
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
    # Read before anything is timed or drawn: mismatched files fail fast.
    stage = None
    if stage_results is not None:
        roles = {chosen.arch.short(): "chosen"}
        if default_arch is not None and default_arch != chosen.arch:
            roles[default_arch.short()] = f"default ratios, hidden {default_arch.hidden}"
        stage = stage_effect(*stage_results, roles)
    archs = [chosen.arch] + ([default_arch] if default_arch is not None else [])
    time_bert_base = base_arch != BERT_BASE
    if time_bert_base:
        archs.append(BERT_BASE)
    # in the runtime the search targeted: the predicted speedups are that runtime's
    timed = measure_latencies(config, scheme, archs, base_arch, threads, infer_cnt,
                              backend=predictor.backend)
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
                              config, scheme, threads, infer_cnt, base=base_arch,
                              searched=predictor.backend,
                              measured=(timed.reference_ms, timed.arch_ms[0]),
                              predicted_speedup=(None if predictor.base_latency_ms is None else
                                                 predictor.base_latency_ms
                                                 / predictor.predict_one(chosen.arch)))
    marked = {"chosen": (chosen.arch, final.scores if final else None)}
    if default_arch is not None and default_arch != chosen.arch:
        marked["default ratios"] = (default_arch, default["final_scores"])
    window = read_window(generation_files[-1]) if generation_files else None
    # Measured archs go on the predictor's scale (its reference latency / their speedup measured
    # against the reference timed beside them), so a machine busier now than when the latency
    # dataset was timed moves no point away from the window it was searched in.
    scale = predictor.base_latency_ms / timed.reference_ms
    scores = latency_scores(evaluated, predictor,
                            {a: ms[i] * scale for i, a in enumerate(archs)},
                            base_arch, predictor.base_latency_ms, window, marked)
    if latency_plot is not None:
        latency_plot = str(plot_latency_vs_score(latency_plot, scores))
        plots.append(latency_plot)
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
        deployed=deployed, latency_vs_score=scores, latency_plot=latency_plot,
        supernet_stage=stage, supernet_stage_note=stage_note, runtime=predictor.backend)


def write_summary(summary: Summary, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`summary.md` and `summary.json` under `output_dir` (atomic)."""
    out = Path(output_dir)
    md, js = out / "summary.md", out / "summary.json"
    atomic_write_text(md, format_summary(summary, links_from=out))
    atomic_write_text(js, json.dumps(summary.to_json(), indent=1) + "\n")
    return md, js
